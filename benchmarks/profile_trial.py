"""Where a sweep trial's wall time goes, end to end: one baseline trial through ``run_sweep`` under cProfile.

    python benchmarks/profile_trial.py --data ../shared/data/mnist.npz --seconds 30 --out benchmarks/profile-30s.json

The trial is sized (digits, epochs) to about ``--seconds`` of training on this machine, as bench.py part d
sizes its trials. Before the profiled sweep an untimed one-trial sweep warms the process up (store made,
TensorFlow traced). Prints, for each phase of the trial, the wall seconds spent inside it (cumulative time
of the functions named in PHASES) and writes them as JSON with the machine and the command.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench  # noqa: E402

# phase -> (file suffix, function name) whose cumulative time is the phase's
PHASES = {
    "whole sweep (run_sweep)": ("search/sweep.py", "run_sweep"),
    "trial (Keras Tuner's run_trial, ours around it)": ("search/tracked_tuner.py", "run_trial"),
    "  start the run (tags, heartbeat, sampler)": ("tracking/runs.py", "start_run"),
    "  log params": ("tracking/mlflow_io.py", "log_params"),
    "  log the dataset": ("tracking/mlflow_io.py", "log_dataset"),
    "  build (incl. clear_session, gc)": ("engine/tuner.py", "_try_build"),
    "    keras clear_session": ("backend/common/global_state.py", "clear_session"),
    "    gc.collect": ("~", "<built-in method gc.collect>"),
    "  fit (training + validation)": ("backend/tensorflow/trainer.py", "fit"),
    "    per-epoch logging (EpochLogger)": ("model/training.py", "on_epoch_end"),
    "    best-epoch weights saved": ("engine/tuner_utils.py", "_save_model"),
    "    resumable checkpoint written": ("tracking/checkpoints.py", "write"),
    "  best-epoch model loaded back": ("engine/tuner.py", "load_model"),
    "  test evaluation, figures, model (evaluate_and_log)": ("model/training.py", "evaluate_and_log"),
    "    test predictions": ("backend/tensorflow/trainer.py", "predict"),
    "    figures": ("tracking/mlflow_io.py", "log_figure"),
    "    model logged": ("tracking/mlflow_io.py", "log_keras_model"),
    "  end the run (last samples, status)": ("tracking/runs.py", "end_run"),
    "oracle: create/end trial, save state": ("engine/oracle.py", "end_trial"),
}


def phases(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for label, (suffix, name) in PHASES.items():
        total = 0.0
        for (file, _line, func), (_cc, _nc, _tt, ct, callers) in stats.stats.items():
            if func == name and (suffix == "~" or file.endswith(suffix)):
                # count only outermost calls: a recursive or nested call of the same function would double it
                if not any(c[2] == name and (suffix == "~" or c[0].endswith(suffix)) for c in callers):
                    total += ct
        out[label] = round(total, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--out")
    args = ap.parse_args()
    data = str(Path(args.data).resolve())
    from mnist_exp.model.data import load_data
    from mnist_exp.search.sweep import run_sweep
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    ips = bench.calibrate(data)
    n_train, epochs = bench.sized(args.seconds, ips)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        (store / "mlruns").mkdir()
        (store / "lr.yaml").write_text(bench.LR_SPACE)
        uri = f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"

        def experiment(name, n, *more):
            return load_experiment(None, [f"data.source={data}", f"data.train_size={n}", f"training.epochs={epochs}",
                                          "tuner.max_trials=1", f"name={name}", f"search_space={store / 'lr.yaml'}",
                                          *more])

        warm = experiment("warm", 600, "data.test_size=500")
        run_sweep(warm, load_space(warm.search_space), load_data(warm.data, warm.seed), uri, verbose=0)
        exp = experiment("profiled", n_train)
        space, ds = load_space(exp.search_space), load_data(exp.data, exp.seed)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        run_sweep(exp, space, ds, uri, verbose=0)
        prof.disable()
        wall = time.perf_counter() - t0
    got = phases(pstats.Stats(prof))
    for label, s in got.items():
        print(f"{label:<55} {s:8.2f} s")
    print(f"{'wall (profiler on)':<55} {wall:8.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "machine": bench.machine(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
            "baseline_images_per_s": ips, "n_train": n_train, "epochs": epochs, "wall_s": wall, "phases_s": got},
            indent=2))


if __name__ == "__main__":
    main()
