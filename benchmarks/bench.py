"""Benchmarks mnist-exp against the seed's own code, side by side in one run.

    python benchmarks/bench.py --data ../shared/data/mnist.npz --quick     # a few minutes
    python benchmarks/bench.py --data ../shared/data/mnist.npz             # full data, longer

Prints a table and writes JSON (--out). Parts: (a) training throughput, seed path vs suite path, with
test accuracy after the same epochs; (b) FLOP utilisation against a measured float32 matmul peak;
(c) tracking overhead of one trial; (d) sweep overhead against bare Keras Tuner on ~30-s and ~5-minute
baseline trials; (e) one sweep of baseline trials (batch 16) run one trial at a time against two at once
(`--parallel 2`); (f) latency of `mnist-exp --help` and of `compare`
over a generated store of 1,000 runs. (g) time to 99.2% is reported as not measured by this script.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BIN = Path(sys.executable).parent
SPE = int(os.environ.get("MNIST_EXP_BENCH_SPE", "0")) or None  # steps_per_execution; None: the suite's default


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    import tensorflow as tf

    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    return {"cpu": cpu, "avx512": " avx512f" in flags, "cores": os.cpu_count(), "tensorflow": tf.__version__,
            "tf_build": "cuda" if tf.test.is_built_with_cuda() else "cpu", "python": platform.python_version()}


def seed_model():
    """The seed tutorial's model, written as it wrote it."""
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(128, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)), layers.Dropout(0.5),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)), layers.Dropout(0.5),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _spe() -> int:
    from mnist_exp.spec.experiment import TrainingConfig

    return SPE or TrainingConfig().steps_per_execution


def part_a(data: str, n_train: int | None, epochs: int, seed: int, rounds: int = 3) -> dict:
    """Seed path against suite path, each round of each in a fresh process, alternating.

    Fresh processes because within one process the first fits run ~1.6x slower whatever their path
    (measured earlier: suite, seed, suite, seed gave 292, 292, 477, 476 images/s), which made the order
    decide the result. Each process also fits 512 digits untimed first, for tracing.
    """
    out = {"rounds": []}
    for _ in range(rounds):
        for path in ("seed", "suite"):
            cmd = [sys.executable, __file__, "--data", data, "--worker-a", path, "--epochs", str(epochs), "--seed", str(seed)]
            if n_train:
                cmd += ["--n-train", str(n_train)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"part a worker {path} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            out["rounds"].append(r)
            print(f"  a {path}: {r['images_per_s']:.0f} images/s, test acc {r['test_accuracy']:.4f}", flush=True)
    for path in ("seed", "suite"):
        rs = [r for r in out["rounds"] if r["path"] == path]
        out[path] = {"images_per_s": statistics.median(r["images_per_s"] for r in rs),
                     "test_accuracy": statistics.mean(r["test_accuracy"] for r in rs)}
    out["speedup"] = out["suite"]["images_per_s"] / out["seed"]["images_per_s"]
    out["accuracy_delta_pp"] = 100 * (out["suite"]["test_accuracy"] - out["seed"]["test_accuracy"])
    return out


def worker_a(path: str, data: str, n_train: int | None, epochs: int, seed: int) -> dict:
    """One timed fit of one path in this process; prints nothing but the result."""
    import keras
    import keras_tuner as kt

    from mnist_exp.spec.experiment import DataConfig
    from mnist_exp.model.data import load_data, one_hot, to_model_inputs
    from mnist_exp.model.training import CNNHyperModel

    ds = load_data(DataConfig(source=data, train_size=n_train, test_size=2000 if n_train else None,
                              validation_split=0.0), seed=42)
    x, y = to_model_inputs(ds.x_train), one_hot(ds.y_train)
    keras.utils.set_random_seed(seed)
    if path == "seed":  # the tutorial's path: NumPy arrays, one-hot labels, fit(batch_size=16)
        model = seed_model()
        fit = functools.partial(model.fit, batch_size=16)
    else:  # the suite's path, same hyperparameters (batch 16)
        hm, hp = CNNHyperModel(_spe(), len(y)), kt.HyperParameters()
        model = hm.build(hp)
        fit = functools.partial(hm.fit, hp, model)
    fit(x[:512], y[:512], epochs=1, verbose=0)
    t0 = time.perf_counter()
    fit(x, y, epochs=epochs, verbose=0)
    wall = time.perf_counter() - t0
    acc = float(model.evaluate(to_model_inputs(ds.x_test), one_hot(ds.y_test), batch_size=256, verbose=0)[1])
    return {"path": path, "images_per_s": len(y) * epochs / wall, "wall_s": wall, "test_accuracy": acc,
            "steps_per_execution": 1 if path == "seed" else _spe()}


def train_flops_per_image() -> float:
    """2 FLOP per multiply-add, forward; training about 3x forward (forward + two backward products)."""
    macs = 26 * 26 * 9 * 1 * 128 + 11 * 11 * 9 * 128 * 64 + 3 * 3 * 9 * 64 * 64 + 576 * 128 + 128 * 10
    return 3 * 2 * macs


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def part_c(store: Path, data: str, n_train: int, epochs: int) -> dict:
    """One fully tracked `train` against the same fit + test evaluation untracked, in one process.

    Before either is timed: the store exists (created once per store, not per trial) and a small
    tracked and untracked fit have run, so neither pays the process's first-fit slowness."""
    import keras
    import keras_tuner as kt

    from mnist_exp import tracking
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.model.data import load_data, one_hot, to_model_inputs
    from mnist_exp.spec.space import load_space
    from mnist_exp.model.tracked_run import run_train
    from mnist_exp.model.training import CNNHyperModel

    def experiment(n):
        return load_experiment(None, [f"data.source={data}", f"data.train_size={n}", "data.test_size=2000",
                                      f"training.epochs={epochs}", f"training.steps_per_execution={_spe()}"])

    exp = experiment(n_train)
    ds = load_data(exp.data, exp.seed)
    uri = f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"
    (store / "mlruns").mkdir(exist_ok=True)
    tracking.configure(uri, exp.mlflow_experiment)

    def untracked(d):
        keras.utils.set_random_seed(exp.seed)
        hm, hp = CNNHyperModel(_spe(), len(d.y_train)), kt.HyperParameters()
        model = hm.build(hp)
        hm.fit(hp, model, to_model_inputs(d.x_train), one_hot(d.y_train),
               validation_data=(to_model_inputs(d.x_val), one_hot(d.y_val)), epochs=epochs, verbose=0)
        model.predict(to_model_inputs(d.x_test), batch_size=256, verbose=0)

    small = experiment(600)
    run_train(small, load_space(None), load_data(small.data, small.seed), uri, verbose=0)  # warm-up
    untracked(load_data(small.data, small.seed))
    t0 = time.perf_counter()
    untracked(ds)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_train(exp, load_space(None), ds, uri, verbose=0)
    tracked = time.perf_counter() - t0
    return {"tracked_s": tracked, "untracked_s": bare, "overhead": tracked / bare - 1, "n_train": len(ds.y_train)}


def sized(target_s: float, images_per_s: float, max_fit: int = 54000) -> tuple[int, int]:
    """(data.train_size, epochs) for a baseline trial of about ``target_s`` seconds of training on this machine
    (the sweep's validation split, 0.1, comes out of train_size)."""
    images = target_s * images_per_s
    epochs = max(1, math.ceil(images / max_fit))
    return min(60000, math.ceil(images / epochs / 0.9)), epochs


def calibrate(data: str) -> float:
    """Images/s of the baseline (batch 16) on the suite's training path here: 6,000 digits, after a warm-up."""
    return worker_a("suite", data, 6000, 1, 42)["images_per_s"]


# The baseline (batch 16) with only the learning rate searched: every trial costs the same.
LR_SPACE = "hyperparameters:\n  learning_rate: {type: choice, values: [1.0e-3, 1.5e-3, 2.0e-3, 3.0e-3]}\n"


def part_d(data: str, trials: int, n_train: int, epochs: int, label: str, rounds: int = 1) -> dict:
    """N baseline trials through mnist-exp's sweep (everything a trial logs: curves, per-epoch checkpoints, system
    metrics, test metrics on all 10,000 test digits, four figures, the model) against the same search through bare
    Keras Tuner. Each timed search runs in a fresh process of its own (after an untimed one-trial warm-up there),
    in the order suite, bare, bare, suite per round (ABBA): a machine that drifts during the part (here two
    sequential 5-minute runs once differed by 10%) weighs on both paths alike."""
    out = {"trials": trials, "epochs": epochs, "order": [], "suite_s": [], "bare_keras_tuner_s": []}
    for _ in range(rounds):
        for path in ("suite", "bare", "bare", "suite"):
            cmd = [sys.executable, __file__, "--data", data, "--worker-d", path, "--n-train", str(n_train),
                   "--epochs", str(epochs), "--trials", str(trials)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"part d worker {path} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            out["order"].append(path)
            out["suite_s" if path == "suite" else "bare_keras_tuner_s"].append(got["wall_s"])
            out["n_fit"] = got["n_fit"]
            print(f"  d {label}: {path} {got['wall_s']:.1f} s ({trials} trials)", flush=True)
    suite, bare = statistics.mean(out["suite_s"]), statistics.mean(out["bare_keras_tuner_s"])
    out.update(suite_mean_s=suite, bare_mean_s=bare, bare_trial_s=bare / trials, overhead=suite / bare - 1,
               suite_trials_per_h=3600 * trials / suite, bare_trials_per_h=3600 * trials / bare)
    return out


def worker_d(path: str, data: str, n_train: int, epochs: int, trials: int) -> dict:
    """One timed search of one path in this process, after an untimed one-trial warm-up of the same path."""
    import keras_tuner as kt

    from mnist_exp.model.data import load_data
    from mnist_exp.model.training import CNNHyperModel, fit_arrays
    from mnist_exp.search.sweep import run_sweep
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        (store / "mlruns").mkdir()
        space_file = store / "lr.yaml"
        space_file.write_text(LR_SPACE)
        uri = f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"

        def experiment(name, n, k, *more):
            return load_experiment(None, [f"data.source={data}", f"data.train_size={n}", f"training.epochs={epochs}",
                                          f"tuner.max_trials={k}", f"name={name}",
                                          f"training.steps_per_execution={_spe()}", f"search_space={space_file}",
                                          *more])

        def search(exp, ds, folder):
            if path == "suite":
                run_sweep(exp, space, ds, uri, verbose=0)
                return
            x, y, val = fit_arrays(ds)
            tuner = kt.RandomSearch(CNNHyperModel(_spe(), len(y), None, epochs), objective="val_accuracy",
                                    max_trials=exp.tuner.max_trials, seed=exp.seed,
                                    hyperparameters=space.to_hyperparameters(), tune_new_entries=False,
                                    directory=str(store / folder), project_name="bench")
            tuner.search(x, y, validation_data=val, epochs=epochs, verbose=0)

        warm = experiment("warm", 600, 1, "data.test_size=500")
        space = load_space(warm.search_space)
        search(warm, load_data(warm.data, warm.seed), "warm")
        exp = experiment("bench", n_train, trials)
        ds = load_data(exp.data, exp.seed)
        with contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            search(exp, ds, "timed")
            wall = time.perf_counter() - t0
    return {"path": path, "wall_s": wall, "n_fit": len(ds.y_train)}


def part_e(data: str, trials: int, n_train: int, epochs: int, workers: int = 2) -> dict:
    """The same sweep (same seed, so the same trials) one trial at a time with all cores, then
    `workers` trials at once with a share of the cores each. Throughput: training images over the
    whole sweep's wall time, per-trial tracking and evaluation included."""
    from mnist_exp.spec.experiment import DataConfig
    from mnist_exp.model.data import load_data

    # digits each trial fits on: the sweep's validation split (0.1, the default) comes out of n_train
    n_fit = len(load_data(DataConfig(source=data, train_size=n_train, test_size=1000), seed=42).y_train)
    out = {"trials": trials, "n_train": n_train, "n_fit": n_fit, "epochs": epochs, "model": "baseline, batch 16"}
    for n in (1, workers):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "mlruns").mkdir()
            (Path(tmp) / "lr.yaml").write_text(LR_SPACE)
            uri = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
            cmd = [str(BIN / "mnist-exp"), "sweep", "--tracking-uri", uri, "--name", f"par{n}", "--data", data,
                   "--max-trials", str(trials), "--epochs", str(epochs), "--parallel", str(n),
                   "--set", f"data.train_size={n_train}", "--set", "data.test_size=1000",
                   "--set", f"search_space={Path(tmp) / 'lr.yaml'}"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise RuntimeError(f"part e sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            from mlflow import MlflowClient

            c = MlflowClient(uri)
            runs = c.search_runs([c.get_experiment_by_name("mnist-exp").experiment_id],
                                 "tags.`mnist_exp.kind` = 'trial' and attributes.status = 'FINISHED'")
            images = sum(n_fit * r.data.metrics["epochs_run"] for r in runs)
            out[f"workers_{n}"] = {"wall_s": wall, "images_per_s": images / wall, "trials_finished": len(runs)}
            print(f"  e {n} at once: {wall:.1f} s, {images / wall:.0f} images/s", flush=True)
    out["speedup"] = out[f"workers_{workers}"]["images_per_s"] / out["workers_1"]["images_per_s"]
    return out


def part_f(store: Path, n_runs: int = 1000) -> dict:
    helps = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "mnist-exp"), "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - t0)
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    uri = f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp_id = c.create_experiment("mnist-exp")
    parent = c.create_run(exp_id, run_name="gen", tags={"mnist_exp.kind": "sweep", "mnist_exp.sweep": "gen",
                                                        "mnist_exp.objective": "max:val_accuracy"}).info.run_id
    t0 = time.perf_counter()
    for i in range(n_runs):
        rid = c.create_run(exp_id, run_name=f"gen-{i}", tags={"mnist_exp.kind": "trial", "mnist_exp.sweep": "gen",
                                                              "mnist_exp.trial_id": str(i),
                                                              "mlflow.parentRunId": parent}).info.run_id
        ts = int(time.time() * 1000)
        c.log_batch(rid, metrics=[Metric(k, (i % 97) / 100, ts, 0) for k in ("objective", "best_val_accuracy",
                                                                            "test_accuracy", "epochs_run")],
                    params=[Param("learning_rate", str(10 ** -(2 + i % 3))), Param("filters_1", str(32 * (1 + i % 4)))],
                    tags=[RunTag("x", "y")])
        c.set_terminated(rid)
    c.set_terminated(parent)
    gen = time.perf_counter() - t0
    compares = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "mnist-exp"), "compare", "--tracking-uri", uri], capture_output=True, check=True)
        compares.append(time.perf_counter() - t0)
    # Where compare's time goes (a bare interpreter, pandas), and what the same read through MLflow's
    # client costs (import mlflow, open the store, search the 1,000 runs): the path compare no longer takes
    # for a local store.
    def median_of(code: str) -> float:
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
            walls.append(time.perf_counter() - t0)
        return statistics.median(walls)

    python_s = median_of("pass")
    pandas_s = median_of("import pandas")
    via_mlflow_s = median_of(f"import mlflow, pandas; c = mlflow.MlflowClient({uri!r}); "
                             f"c.search_runs([c.get_experiment_by_name('mnist-exp').experiment_id], max_results=5000)")
    return {"help_s_median": statistics.median(helps), "compare_1000_runs_s_median": statistics.median(compares),
            "generate_1000_runs_s": gen, "python_startup_s": python_s, "import_pandas_s": pandas_s,
            "mlflow_client_search_1000_runs_s": via_mlflow_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="full MNIST .npz (or IDX folder)")
    ap.add_argument("--quick", action="store_true", help="subset and fewer epochs: a few minutes")
    ap.add_argument("--out", default="benchmarks/results.json")
    ap.add_argument("--only", help="comma-separated parts to run, e.g. a,c")
    ap.add_argument("--rounds", type=int, default=3, help="(a): fresh-process rounds per path (default 3)")
    ap.add_argument("--worker-a", choices=("seed", "suite"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-d", choices=("suite", "bare"), help=argparse.SUPPRESS)
    ap.add_argument("--trials", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n-train", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = str(Path(args.data).resolve())
    if args.worker_a:
        print(json.dumps(worker_a(args.worker_a, data, args.n_train, args.epochs, args.seed)))
        return
    if args.worker_d:
        print(json.dumps(worker_d(args.worker_d, data, args.n_train, args.epochs, args.trials)))
        return
    n_train, epochs, trials = (6000, 1, 3) if args.quick else (None, 1, 4)
    parts = set((args.only or "a,b,c,d,e,f,g").split(","))
    out = Path(args.out)
    res = {}
    if args.only and out.exists():  # a partial rerun updates the parts it ran, keeps the others
        res = json.loads(out.read_text())
    res.update({"machine": machine(), "mode": "quick" if args.quick else "full", "n_train": n_train or "all",
                "epochs": epochs, "steps_per_execution": _spe(),
                "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:])})
    res.setdefault("measured", {})
    print(f"machine: {res['machine']}; mode {res['mode']}: {n_train or 'all'} training digits, {epochs} epoch(s)",
          flush=True)

    def done(key: str, value) -> None:  # written after every part: a crash keeps what was measured
        res[key] = value
        res["measured"][key] = time.strftime("%Y-%m-%d %H:%M:%S")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"{key} done", flush=True)

    if "a" in parts or "b" in parts:
        done("a_throughput", part_a(data, n_train, epochs, 42, args.rounds))
    if "b" in parts:
        peak = matmul_peak_gflops()
        suite_flops = res["a_throughput"]["suite"]["images_per_s"] * train_flops_per_image() / 1e9
        done("b_flops", {"matmul_peak_gflops": peak, "train_gflop_per_image": train_flops_per_image() / 1e9,
                         "suite_training_gflops": suite_flops, "utilisation": suite_flops / peak})
    if "c" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            done("c_tracking", part_c(Path(tmp), data, n_train or 60000, epochs))
    ips = None
    if ("d" in parts or "e" in parts) and not args.quick:  # trial sizes for this machine's speed
        ips = calibrate(data)
        done("de_calibration", {"baseline_images_per_s": ips, "30s": sized(30, ips), "5min": sized(300, ips)})
        print(f"  baseline here: {ips:.0f} images/s; a 30-s trial: {sized(30, ips)}, a 5-min one: {sized(300, ips)} "
              "(train_size, epochs)", flush=True)
    if "d" in parts:  # ~30-s and ~5-minute baseline trials
        sizes = ([("short", 3, 3000, 1)] if args.quick else
                 [("30s", 3, *sized(30, ips)), ("5min", 1, *sized(300, ips))])
        for label, n, size, ep in sizes:
            done(f"d_sweep_{label}", part_d(data, n, size, ep, label))
    if "e" in parts:
        done("e_parallel_trials", part_e(data, 4, *((3000, 1) if args.quick else sized(30, ips))))
    if "f" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "mlruns").mkdir()
            done("f_latency", part_f(Path(tmp)))
    if "g" in parts:
        done("g_time_to_99_2", "not measured by this script: `mnist-exp sweep experiments/fast.yaml` (docs/results-overview.md)")
    print()
    for row in table(res):
        print(f"{row[0]:<34} {row[1]:>16}  {row[2]}")
    print(f"\nwrote {out}")


def _interleave(d: dict) -> list[float]:
    """Part d's times in the order they ran."""
    suite, bare = iter(d["suite_s"]), iter(d["bare_keras_tuner_s"])
    return [next(suite) if p == "suite" else next(bare) for p in d["order"]]


def table(res: dict) -> list[tuple[str, str, str]]:
    rows = []
    if a := res.get("a_throughput"):
        rows += [
            ("a seed path images/s", f"{a['seed']['images_per_s']:.0f}", f"test acc {a['seed']['test_accuracy']:.4f}"),
            ("a suite path images/s", f"{a['suite']['images_per_s']:.0f}", f"test acc {a['suite']['test_accuracy']:.4f}"),
            ("a speed-up (target >= 1.3x)", f"{a['speedup']:.2f}x", f"accuracy delta {a['accuracy_delta_pp']:+.2f} pp"),
        ]
    if b := res.get("b_flops"):
        rows += [
            ("b float32 matmul peak", f"{b['matmul_peak_gflops']:.0f} GFLOP/s", ""),
            ("b suite training", f"{b['suite_training_gflops']:.0f} GFLOP/s", f"utilisation {100 * b['utilisation']:.0f}%"),
        ]
    if c := res.get("c_tracking"):
        rows.append(("c tracking overhead (<= 2%)", f"{100 * c['overhead']:+.1f}%",
                     f"{c['tracked_s']:.1f} s vs {c['untracked_s']:.1f} s"))
    for key, target in (("d_sweep_short", ""), ("d_sweep_30s", " (<= 5%)"), ("d_sweep_5min", " (<= 2%)")):
        if d := res.get(key):
            each = " / ".join(f"{p} {s:.1f}" for p, s in zip(d["order"], _interleave(d)))
            rows.append((f"d sweep overhead, {d['bare_trial_s']:.0f}-s trials{target}", f"{100 * d['overhead']:+.1f}%",
                         f"{d['trials']} trial(s) x {d['epochs']} epoch(s) x {d['n_fit']} digits, means "
                         f"{d['suite_mean_s']:.1f} s vs {d['bare_mean_s']:.1f} s ({each} s); "
                         f"{d['suite_trials_per_h']:.0f} vs {d['bare_trials_per_h']:.0f} trials/h"))
    if e := res.get("e_parallel_trials"):
        one, two = e["workers_1"], e["workers_2"]
        rows += [
            ("e sweep, 1 trial at a time", f"{one['images_per_s']:.0f} images/s",
             f"{e['trials']} trials x {e['epochs']} epoch(s) x {e['n_train']} digits: {one['wall_s']:.0f} s"),
            ("e sweep, 2 at once (1 core each)", f"{two['images_per_s']:.0f} images/s", f"{two['wall_s']:.0f} s"),
            ("e parallel speed-up", f"{e['speedup']:.2f}x", "whole sweep, tracking included"),
        ]
    if f := res.get("f_latency"):
        rows += [
            ("f mnist-exp --help (<= 0.5 s)", f"{f['help_s_median']:.2f} s", "median of 5"),
            ("f compare, 1,000 runs (<= 2 s)", f"{f['compare_1000_runs_s_median']:.2f} s", "median of 3, whole process"),
            ("f   of which: python + import pandas", f"{f.get('import_pandas_s', float('nan')):.2f} s",
             f"bare python {f.get('python_startup_s', float('nan')):.2f} s"),
            ("f   same read via MLflow's client", f"{f.get('mlflow_client_search_1000_runs_s', float('nan')):.2f} s",
             "python + import mlflow, pandas + open the store + search_runs: what compare skips"),
        ]
    if "g_time_to_99_2" in res:
        rows.append(("g time to 99.2% test accuracy", "-", str(res["g_time_to_99_2"])))
    return rows


if __name__ == "__main__":
    main()
