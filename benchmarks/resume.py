"""A long fit killed with SIGKILL and resumed, against the same fit never interrupted; and what a checkpoint costs.

    python benchmarks/resume.py --data ../shared/data/mnist.npz --out benchmarks/resume.json

The fit is best.yaml's refit as its seed-42 run chose it (docs/results-overview.md, "Search power": trial 0039's configuration, 27
epochs on all 60,000 training digits), run as `mnist-exp train experiments/best.yaml …` in a store of its own:
once uninterrupted, once killed at the end of epoch ``--kill-at`` (the fault point ``epoch_checkpointed``: the
checkpoint written, the epoch's metrics not yet logged) and then run again with the same command. Reports the
epochs each process trained, the resumed run's curves, both test accuracies, and the checkpoint's size and the
seconds its write adds to an epoch (median of 5 writes of the same model to a local store).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHAMPION = {"learning_rate": 0.0198, "dropout_1": 0.2, "dropout_2": 0.5, "activation": "swish", "optimizer": "adam",
            "weight_decay": 1e-5, "label_smoothing": 0.1, "rotation": 2.5, "translation": 0.05, "zoom": 0.05}
EPOCHS = 27


def command(data: str, uri: str) -> list[str]:
    sets = [x for k, v in CHAMPION.items() for x in ("--set", f"hp.{k}={v}")]
    return [str(BIN / "mnist-exp"), "train", str(REPO / "experiments" / "best.yaml"), "--data", data,
            "--epochs", str(EPOCHS), "--set", "data.validation_split=0", "--set", "tuner.refit=false",
            "--tracking-uri", uri, *sets]


def run(cmd: list[str], env: dict | None = None) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def epochs_trained(out: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^\[train best\] epoch (\d+)/{EPOCHS}:", out, re.M)]


def the_run(uri: str):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    [run] = c.search_runs([c.get_experiment_by_name("mnist-exp").experiment_id])
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss"))
    return run, steps


def checkpoint_cost(data: str) -> dict:
    """Seconds one epoch's checkpoint write takes for best.yaml's model, and its size, against a local store."""
    import keras

    from mnist_exp import tracking
    from mnist_exp.model import resume
    from mnist_exp.model.training import hypermodel_for
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    exp = load_experiment(REPO / "experiments" / "best.yaml",
                          [f"data.source={data}", *[f"hp.{k}={v}" for k, v in CHAMPION.items()]])
    hp = load_space(exp.search_space).to_hyperparameters(fixed=exp.hp)
    model = hypermodel_for(exp, 60000).build(hp)
    model.optimizer.build(model.trainable_variables)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mlruns").mkdir()
        uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
        experiment_id = tracking.configure(uri, "mnist-exp")
        run_id = tracking.client().create_run(experiment_id).info.run_id
        tracking.set_tags({}, run_id)
        from mnist_exp.tracking import liveness

        tracking.set_tags(liveness.identity(), run_id)
        ckpt = resume.EpochCheckpoint(run_id, "bench", 1, ("accuracy", "max"))
        ckpt.set_model(model)
        seconds = []
        for epoch in range(5):
            t0 = time.perf_counter()
            ckpt.on_epoch_end(epoch, {"loss": 1.0 - epoch / 10, "accuracy": 0.9 + epoch / 100})
            seconds.append(time.perf_counter() - t0)
        root = Path(tracking.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoint"
        version = sorted(p for p in root.iterdir())[-1]
        size = sum(p.stat().st_size for p in version.rglob("*") if p.is_file())
    keras.backend.clear_session()
    return {"write_s_median": statistics.median(seconds), "write_s": seconds, "version_bytes": size,
            "trainable_params": int(sum(v.numpy().size for v in model.trainable_variables))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--kill-at", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/resume.json")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the uninterrupted fit from --out; run only the killed-and-resumed pair")
    args = ap.parse_args()
    data = str(Path(args.data).resolve())
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench

    res = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
           "fit": f"mnist-exp train experiments/best.yaml, {EPOCHS} epochs, all 60,000 training digits",
           "champion_hp": CHAMPION, "kill_at_epoch": args.kill_at}
    kept = json.loads(Path(args.out).read_text()) if args.reuse else {}
    res["checkpoint"] = checkpoint_cost(data)
    print(f"checkpoint: {res['checkpoint']['version_bytes'] / 1e6:.1f} MB, "
          f"{res['checkpoint']['write_s_median']:.3f} s a write", flush=True)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        for d in (a, b):
            (Path(d) / "mlruns").mkdir()
        uri_a, uri_b = f"sqlite:///{a}/mlruns/mlflow.db", f"sqlite:///{b}/mlruns/mlflow.db"
        if kept.get("uninterrupted"):
            res["uninterrupted"] = {**kept["uninterrupted"], "measured": kept.get("date"), "command": kept.get("command")}
        else:
            rc, out, wall = run(command(data, uri_a))
            assert rc == 0, out[-3000:]
            run_a, steps_a = the_run(uri_a)
            res["uninterrupted"] = {"wall_s": wall, "test_accuracy": run_a.data.metrics["test_accuracy"],
                                    "epochs_logged": len(steps_a)}
        print(f"uninterrupted: {res['uninterrupted']['wall_s']:.0f} s, "
              f"test accuracy {res['uninterrupted']['test_accuracy']:.4f}", flush=True)
        rc, out1, wall1 = run(command(data, uri_b), {"MNIST_EXP_FAULT": f"epoch_checkpointed@{args.kill_at}"})
        assert rc == -9, out1[-3000:]
        rc, out2, wall2 = run(command(data, uri_b))
        assert rc == 0, out2[-3000:]
        run_b, steps_b = the_run(uri_b)
        first, second = epochs_trained(out1), epochs_trained(out2)
        repeated = sorted(set(first) & set(second))
        res["interrupted"] = {
            "killed_process_wall_s": wall1, "resumed_process_wall_s": wall2, "epochs_killed_process": first,
            "epochs_resumed_process": second, "epochs_trained_twice": repeated,
            "resumed_from_epoch": run_b.data.tags.get("mnist_exp.resumed_from_epoch"),
            "status": run_b.info.status, "runs": 1, "loss_steps": steps_b,
            "test_accuracy": run_b.data.metrics["test_accuracy"]}
        res["test_accuracy_delta_points"] = 100 * (run_b.data.metrics["test_accuracy"]
                                                    - res["uninterrupted"]["test_accuracy"])
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
