"""Bad input, as a user types it: every case is exit 2 (or ConfigError/DataError), one line naming the
file or flag and the key, and nothing written (no store, no runs, no tuner folder, no output file)."""

import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mnist_exp.spec import names
from mnist_exp.cli import main
from mnist_exp.spec.experiment import DataConfig, load_experiment
from mnist_exp.model.data import load_data
from mnist_exp.runtime.errors import ConfigError, DataError
from mnist_exp.model.predict import MAX_PIXELS, TRANSPARENT, UNIFORM, load_images, mnist_form, to_mnist
from mnist_exp.spec.space import load_space

from helpers import ROOT, write_yaml

pytestmark = pytest.mark.fresh_store  # "nothing written" includes the store itself

QUICK = str(ROOT / "experiments" / "quick.yaml")
RULE = "must be a non-empty name of at most 100 ASCII letters, digits, '.', '_' or '-', starting with a letter or a digit"


def one_error_line(capsys, command: str) -> str:
    """The single stderr line of a failed in-process command, without its ``mnist-exp <command>: error: `` prefix."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    prefix = f"mnist-exp {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


def assert_nothing_written(root):
    """No store, no tuner state, no artifacts: mlruns/ is as the fixture made it (empty) or absent."""
    store = root / "mlruns"
    assert not store.exists() or list(store.iterdir()) == [], list(store.iterdir())


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A folder without mlruns/ and without MLFLOW_TRACKING_URI: any store access would create mlruns/."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


# ---- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["quick", "a", "A.b_c-9", "2024", "x" * 100, "v1", "latest"])
def test_good_names(value):
    assert names.fault(value) is None


@pytest.mark.parametrize("value, fault", [
    ("", RULE), (".", RULE), ("..", RULE), ("../x", RULE), ("a/b", RULE), ("a\\b", RULE), ("a b", RULE),
    ("a\tb", RULE), ("a\nb", RULE), ("a\x00b", RULE), ("-x", RULE), (".hidden", RULE), ("café", RULE),
    ("a'b", RULE), ("x" * 101, "is 101 characters long; at most 100"), (7, RULE), (None, RULE),
])
def test_bad_names(value, fault):
    why = names.fault(value)
    assert why.startswith(fault) and "\n" not in why and len(why) < 220, why


@pytest.mark.parametrize("value, fault", [("champion", None), ("best-2", None), ("a.b", "no '.'"),
                                          ("latest", "reserved"), ("V3", "reserved"), ("x" * 101, "at most 100")])
def test_aliases_follow_mlflow(value, fault):
    why = names.fault(value, kind="alias")
    assert (why is None) if fault is None else (fault in why)


@pytest.mark.parametrize("argv, where", [
    (["--name", "n" * 300], "--name: is 300 characters long; at most 100 (got 'nnnn"),
    (["--name", ".."], f"--name: {RULE} (got '..')"),
    (["--name", "."], f"--name: {RULE} (got '.')"),
    (["--name", "a/b"], f"--name: {RULE} (got 'a/b')"),
    (["--name", "x\ny"], f"--name: {RULE} (got 'x\\ny')"),
    (["--name", ""], f"--name: {RULE} (got '')"),
    (["--set", "name=.."], f"--set name=..: name: {RULE} (got '..')"),
    (["--set", "name=" + "n" * 300], "--set name=nnnn"),
])
def test_bad_sweep_name_is_exit_2_before_anything_is_written(store, capsys, argv, where):
    assert main(["sweep", QUICK, *argv]) == 2
    assert one_error_line(capsys, "sweep").startswith(where)
    assert_nothing_written(store)


def test_bad_name_in_the_experiment_file(store, capsys):
    path = write_yaml(store / "exp.yaml", "name: 'a\tb'\nsearch_space: ../search_spaces/small.yaml\n")
    assert main(["train", str(path)]) == 2
    assert one_error_line(capsys, "train") == f"{path}: name: {RULE} (got 'a\\tb')"
    assert_nothing_written(store)


@pytest.mark.parametrize("argv, message", [
    (["--model-name", "a/b"], f"--model-name: {RULE} (got 'a/b')"),
    (["--model-name", "m" * 101], "--model-name: is 101 characters long; at most 100"),
    (["--alias", "latest"], "--alias: 'latest' is reserved by MLflow's model registry"),
    (["--alias", "best.v2"], "--alias: must be a non-empty name of at most 100 ASCII letters, digits, '_' or '-' (no '.')"),
])
def test_bad_model_name_or_alias(bare, capsys, argv, message):
    assert main(["promote", *argv]) == 2
    assert one_error_line(capsys, "promote").startswith(message)
    assert_nothing_written(bare)


# ---- experiment files -------------------------------------------------------------------------------------

SPACE = "search_space: " + str(ROOT / "search_spaces" / "small.yaml") + "\n"


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty; an experiment needs at least a search_space"),
    (b"# only a comment\n", "the file is empty"),
    (b"{}\n", "the file is empty"),
    (b"name: caf\xe9\n", "not a UTF-8 text file (byte 0xe9 at line 1); save it as UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file (byte 0x89 at line 1)"),
    (b"name: a\x00\n", "not a text file (holds NUL bytes)"),
    (b"seed: 1\nname: a\nseed: 2\n", "not valid YAML (line 3): duplicate key 'seed' (first on line 1)"),
    (b"tuner: {kind: random, max_trials: 2, kind: grid}\n", "not valid YAML (line 1): duplicate key 'kind'"),
    (SPACE.encode() + b"seed: -1\n", "seed: must be in 0 .. 2**32 - 1 (got -1)"),
    (SPACE.encode() + b"seed: 4294967296\n", "seed: must be in 0 .. 2**32 - 1 (got 4294967296)"),
    (SPACE.encode() + b"data: {validation_split: .nan}\n", "data.validation_split: must be a finite number (got nan)"),
    (SPACE.encode() + b"hp: {learning_rate: .nan}\n", "hp.learning_rate: must be a finite number (got nan)"),
    (SPACE.encode() + b"hp: {learning_rate: -.inf}\n", "hp.learning_rate: must be a finite number (got -inf)"),
    (SPACE.encode() + b"hp: {filters_1: 100000000000}\n", "hp.filters_1: must be at most 1,024 (got 100,000,000,000)"),
    (SPACE.encode() + b"hp: {batch_size: 10000000}\n", "hp.batch_size: must be at most 65,536"),
    (SPACE.encode() + b"training: {epochs: 1000000000000}\n", "training.epochs: must be at most 10,000 (got 1,000,000,000,000)"),
    (SPACE.encode() + b"tuner: {max_trials: 10000000}\n", "tuner.max_trials: must be at most 100,000"),
    (SPACE.encode() + b"tuner: {parallel_trials: 100000}\n", "tuner.parallel_trials: must be at most 256"),
    (SPACE.encode() + b"data: {train_size: 100000000000}\n", "data.train_size: must be at most 10,000,000"),
    (SPACE.encode() + b"data: {train_size: 10}\n",
     "data.train_size: 10 digits leave 0 for training once validation_split 0.1 takes 10; training needs at least 10"),
    (SPACE.encode() + b"data: {train_size: 100, validation_split: 0.95}\n", "data.train_size: 100 digits leave 5 for training"),
])
def test_bad_experiment_file(tmp_path, content, message):
    path = tmp_path / "exp.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_smallest_training_subset_is_accepted():
    exp = load_experiment(None, ["data.train_size=20", "data.test_size=10"])
    ds = load_data(exp.data, exp.seed)
    assert ds.sizes == {"train": 10, "val": 10, "test": 10}


def test_a_source_too_small_for_its_validation_split(tmp_path, embedded):
    path = tmp_path / "few.npz"
    np.savez(path, x_train=embedded["x_train"][:15], y_train=embedded["y_train"][:15],
             x_test=embedded["x_test"][:20], y_test=embedded["y_test"][:20])
    with pytest.raises(DataError) as e:
        load_data(DataConfig(source=str(path)))
    assert str(e.value) == (f"{path}: x_train: 15 digits leave 5 for training once validation_split 0.1 takes 10; "
                            "training needs at least 10 (use at least 20 digits)")


@pytest.mark.parametrize("argv, message", [
    (["--set", "seed=-1"], "--set seed=-1: seed: must be in 0 .. 2**32 - 1 (got -1)"),
    (["--set", "seed=4294967296"], "--set seed=4294967296: seed: must be in 0 .. 2**32 - 1"),
    (["--set", "hp.learning_rate=.nan"], "--set hp.learning_rate=.nan: hp.learning_rate: must be a finite number (got nan)"),
    (["--set", "hp.dense_units=10000000"], "--set hp.dense_units=10000000: hp.dense_units: must be at most 16,384"),
    (["--set", "data.train_size=10"], "--set data.train_size=10: data.train_size: 10 digits leave 0 for training"),
    (["--epochs", "1000000000000"], "--epochs 1000000000000: training.epochs: must be at most 10,000"),
    (["--max-trials", "10000000"], "--max-trials 10000000: tuner.max_trials: must be at most 100,000"),
    (["--parallel", "0"], "--parallel 0: tuner.parallel_trials: must be at least 1"),
    (["--set", "tuner=3"], "--set tuner=3: tuner: must be a mapping"),
    (["--set", "training..epochs=3"], "--set training..epochs=3: 'training..epochs': not a key"),
    (["--set", "a\nb=1"], "--set a\\nb=1: a\\nb: unknown key"),
])
def test_bad_override_is_named_by_what_was_typed(store, capsys, argv, message):
    assert main(["sweep", QUICK, *argv]) == 2
    assert one_error_line(capsys, "sweep").startswith(message)
    assert_nothing_written(store)


@pytest.mark.parametrize("content, message", [
    (b"hyperparameters:\n  activation: {type: choice, values: [r\xe9lu]}\n", "not a UTF-8 text file (byte 0xe9 at line 2)"),
    (bytes(range(256)), "not a UTF-8 text file (byte 0x80 at line 2)"),
    (b"hyperparameters:\n  filters_1: {type: int, min: 16, max: 64}\n  filters_1: {type: int, min: 8, max: 32}\n",
     "not valid YAML (line 3): duplicate key 'filters_1' (first on line 2)"),
    (b"hyperparameters:\n  learning_rate: {type: float, min: 1.0e-4, max: .inf}\n",
     "hyperparameters.learning_rate.max: must be a finite number (got inf)"),
    (b"hyperparameters:\n  learning_rate: {type: float, min: .nan, max: 0.1}\n",
     "hyperparameters.learning_rate.min: must be a finite number (got nan)"),
    (b"hyperparameters:\n  learning_rate: {type: float, min: 1.0e-4, max: 0.1, default: .nan}\n",
     "hyperparameters.learning_rate.default: must be a finite number"),
    (b"hyperparameters:\n  filters_1: {type: int, min: 32, max: 100000000000}\n",
     "hyperparameters.filters_1.max: must be at most 1,024 (got 100,000,000,000)"),
    (b"hyperparameters:\n  dense_units: {type: choice, values: [64, 99999999]}\n",
     "hyperparameters.dense_units.values: must be at most 16,384"),
    (b"hyperparameters:\n  batch_size: {type: fixed, value: 100000000}\n",
     "hyperparameters.batch_size.value: must be at most 65,536"),
])
def test_bad_space_file(tmp_path, content, message):
    path = tmp_path / "space.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_space(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value), str(e.value)


# ---- compare and ui ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--top", "0"], "--top 0: must be at least 1"),
    (["--top", "-1"], "--top -1: must be at least 1"),
    (["--csv", "missing/dir/x.csv"], "--csv missing/dir/x.csv: folder missing/dir does not exist"),
    (["--plot", "missing/x.png"], "--plot missing/x.png: folder missing does not exist"),
    (["--csv", "."], "--csv .: is a folder; give a file name"),
])
def test_compare_arguments_are_checked_before_the_store_is_read(bare, capsys, argv, message):
    assert main(["compare", *argv]) == 2
    assert one_error_line(capsys, "compare") == message
    assert_nothing_written(bare)


@pytest.mark.slow
def test_compare_takes_any_text_as_a_sweep_name(swept_store, capsys):
    """Sweep arguments are only looked up: odd ones are "no such sweep", one line, exit 2."""
    assert main(["compare", "a\nb", "../x", "", "é" * 300]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("mnist-exp compare: no sweep named a\\nb, ../x, , ")


def test_ui_on_a_busy_port_is_one_line(bare, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2  # exec'ing the server here would end the test process
    assert one_error_line(capsys, "ui") == (f"--port {port}: 127.0.0.1:{port} is already in use (another mnist-exp ui?); "
                                            "stop it or choose another --port")
    assert main(["ui", "--port", "70000"]) == 2
    assert one_error_line(capsys, "ui") == "--port 70000: must be in 1-65535"
    assert_nothing_written(bare)


# ---- predict ------------------------------------------------------------------------------------------------


def png(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return str(path)


def corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("fill", [0, 255, 128])
def test_uniform_images_have_no_digit(fill):
    img, reason = mnist_form(np.full((40, 30), fill, np.uint8))
    assert reason == UNIFORM and not img.any()


def test_transparency_is_composited(tmp_path, embedded):
    """A digit drawn on a transparent background reads as that digit, dark ink or light."""
    for i, digit in enumerate(embedded["x_test"][:10]):
        reference = to_mnist(digit)
        dark = np.zeros((28, 28, 4), np.uint8)  # black ink, opaque where the digit is
        dark[..., 3] = digit
        light = np.full((28, 28, 4), 255, np.uint8)  # white ink on a transparent (black) ground
        light[..., 3] = digit
        for rgba in (dark, light):
            [(_, got, reason)] = load_images(png(tmp_path / f"d{i}.png", rgba, "RGBA"))
            assert reason is None and corr(got, reference) > 0.99
    [(_, got, reason)] = load_images(png(tmp_path / "clear.png", np.zeros((28, 28, 4), np.uint8), "RGBA"))
    assert reason == TRANSPARENT and not got.any()


def huge_png(path, side=20000) -> str:
    """A valid 1-bit grey-scale PNG of side x side pixels, written without holding the image in memory."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + side // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return str(path)


def test_predict_refuses_an_oversized_image(bare, capsys):
    big = huge_png(bare / "big.png")
    assert main(["predict", big]) == 2
    assert one_error_line(capsys, "predict") == (f"{big}: image of 20000x20000 pixels is too large "
                                                 f"(limit {MAX_PIXELS:,} pixels); crop or scale it down")
    assert_nothing_written(bare)


def test_predict_flags_images_without_a_digit(bare, capsys):
    """No model is needed (nor loaded) when no image holds a digit; exit 1 says some image had none."""
    import json

    files = [png(bare / "white.png", np.full((50, 50), 255, np.uint8)),
             png(bare / "grey.png", np.full((20, 60, 3), 90, np.uint8)),
             png(bare / "clear.png", np.zeros((28, 28, 4), np.uint8), "RGBA")]
    assert main(["predict", *files, "--model", "models:/nosuch@none"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{files[0]}: no digit found (blank image)", f"{files[1]}: no digit found (blank image)",
                   f"{files[2]}: no digit found (fully transparent)"]
    assert main(["predict", files[2], "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"file": files[2], "digit_found": False, "reason": "fully transparent",
                                                   "label": None, "probability": None, "probabilities": None}
