import gzip
import struct

import numpy as np
import pytest

from mnist_exp.spec.experiment import DataConfig
from mnist_exp.model.data import EMBEDDED_PATH, load_data, read_idx
from mnist_exp.runtime.errors import DataError

from helpers import cli, cli_here, runs


def write_npz(path, d, **replace):
    arrays = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    arrays.update(replace)
    for k in [k for k, v in arrays.items() if v is None]:
        del arrays[k]
    np.savez(path, **arrays)
    return path


def write_idx(path, arr, gz=False):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    (gzip.open(path, "wb") if gz else open(path, "wb")).write(raw)


def small(embedded, n_train=500, n_test=200):
    return {"x_train": embedded["x_train"][:n_train], "y_train": embedded["y_train"][:n_train],
            "x_test": embedded["x_test"][:n_test], "y_test": embedded["y_test"][:n_test]}


def test_embedded_subset_is_real_stratified_mnist(embedded):
    assert embedded["x_train"].shape == (10000, 28, 28) and embedded["x_test"].shape == (2000, 28, 28)
    counts = np.bincount(embedded["y_train"], minlength=10)
    # MNIST's own class mix (5923/6742/.../5949 of 60,000) scaled to 10,000, within one digit.
    full = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]) * 10000 / 60000
    assert np.all(np.abs(counts - full) <= 1)
    assert embedded["x_train"].max() == 255 and 0.1 < embedded["x_train"].mean() / 255 < 0.2


def test_subsets_and_validation_split_are_stratified_seeded_and_disjoint():
    ds = load_data(DataConfig(train_size=1000, test_size=300, validation_split=0.2), seed=7)
    assert ds.sizes == {"train": 800, "val": 200, "test": 300}
    for y in (ds.y_train, ds.y_val, ds.y_test):
        frac = np.bincount(y, minlength=10) / len(y)
        assert np.all(np.abs(frac - 0.1) < 0.04)  # MNIST classes are 9-11% each
    train_rows = {r.tobytes() for r in ds.x_train}
    assert not any(r.tobytes() in train_rows for r in ds.x_val)
    again = load_data(DataConfig(train_size=1000, test_size=300, validation_split=0.2), seed=7)
    assert again.fingerprint == ds.fingerprint
    other = load_data(DataConfig(train_size=1000, test_size=300, validation_split=0.2), seed=8)
    assert other.fingerprint != ds.fingerprint
    assert other.test_fingerprint == ds.test_fingerprint  # the test subset never depends on the seed


def test_npz_source_matches_embedded_arrays(tmp_path, embedded):
    path = write_npz(tmp_path / "d.npz", small(embedded))
    ds = load_data(DataConfig(source=str(path), validation_split=0.0))
    assert ds.sizes == {"train": 500, "val": 0, "test": 200}
    np.testing.assert_array_equal(ds.x_test, embedded["x_test"][:200])
    assert ds.source == str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_source(tmp_path, embedded, gz):
    d = small(embedded)
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for k, name in names.items():
        write_idx(tmp_path / (name + (".gz" if gz else "")), d[k], gz=gz)
    ds = load_data(DataConfig(source=str(tmp_path), validation_split=0.0))
    np.testing.assert_array_equal(ds.x_train, d["x_train"])
    np.testing.assert_array_equal(ds.y_test, d["y_test"])


BAD_NPZ = {
    "missing key": ({"y_test": None}, "missing key(s) y_test"),
    "wrong shape": ({"x_train": np.zeros((500, 32, 32), np.uint8)}, "x_train: shape (500, 32, 32)"),
    "wrong dtype": ({"x_train": np.zeros((500, 28, 28), np.float64)}, "x_train: dtype float64"),
    "labels out of range": ({"y_train": np.full(500, 12, np.uint8)}, "labels outside 0-9"),
    "count mismatch": ({"y_test": np.zeros(150, np.uint8)}, "x_test has 200 images but y_test has 150"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_is_one_line_data_error_naming_file(tmp_path, embedded, case):
    replace, message = BAD_NPZ[case]
    path = write_npz(tmp_path / "bad.npz", small(embedded), **replace)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(source=str(path)))
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_truncated_npz_and_missing_path(tmp_path, embedded):
    path = write_npz(tmp_path / "t.npz", small(embedded))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(DataConfig(source=str(path)))
    with pytest.raises(DataError, match="no such file or folder"):
        load_data(DataConfig(source=str(tmp_path / "nope.npz")))


def test_truncated_and_wrong_idx_files(tmp_path, embedded):
    p = tmp_path / "imgs"
    write_idx(p, embedded["x_train"][:10])
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or padded IDX data"):
        read_idx(p, images=True)
    write_idx(p, embedded["y_train"][:10])
    with pytest.raises(DataError, match="IDX images need 3 dimension"):
        read_idx(p, images=True)
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="missing IDX file train-images-idx3-ubyte"):
        load_data(DataConfig(source=str(tmp_path / "folder")))


def test_subset_larger_than_source_is_an_error():
    with pytest.raises(DataError, match="train_size: asks for 20000 digits but the source has 10000"):
        load_data(DataConfig(train_size=20000))


def test_cli_bad_data_exits_2_with_one_line_and_no_run(store, embedded):
    path = write_npz(store / "bad.npz", small(embedded), y_train=np.full(500, 11, np.uint8))
    proc = cli_here("train", "--data", path, "--epochs", "1", check=2)
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("mnist-exp train: error: ") and str(path) in err[-1] and "labels outside 0-9" in err[-1]
    assert runs() == []


@pytest.mark.slow
def test_keras_mnist_offline_says_how_to_point_at_a_local_copy(store, tmp_path):
    # No cached copy, and a proxy on a closed local port makes any machine offline for the download.
    offline = {"KERAS_HOME": str(tmp_path / "keras_home"), "HTTPS_PROXY": "http://127.0.0.1:9",
               "https_proxy": "http://127.0.0.1:9"}
    proc = cli("train", "--data", "mnist", env=offline)
    assert proc.returncode == 2, proc.stderr
    assert "--data PATH" in proc.stderr.strip().splitlines()[-1]
    assert runs() == []


def test_embedded_file_is_packaged():
    assert EMBEDDED_PATH.is_file() and EMBEDDED_PATH.stat().st_size < 3_000_000
