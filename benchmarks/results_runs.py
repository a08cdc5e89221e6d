"""Real runs of a shipped experiment, whole command timed: sweep, then promote, in a fresh store per seed.

    python benchmarks/results_runs.py experiments/medium.yaml --data ../shared/data/mnist.npz --seeds 42,43,44 \
        --out benchmarks/medium.json

For each seed: ``mnist-exp sweep EXP --data D --set seed=S --name NAME-S`` then ``mnist-exp promote NAME-S``
(the experiment's own ``tuner.ensemble`` decides whether an ensemble is promoted), both in a temporary project
folder with its own store. Reports the whole command's wall time (both steps, with start-up), the champion's
test accuracy and what it is (an ensemble's members, a trial, a refit), the best single trial's test accuracy
(the trial ``promote --ensemble 1`` would register), the trials finished, and writes them as JSON with the machine
and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_seed(exp: Path, data: str, seed: int, name: str, keep: Path | None = None) -> dict:
    """``keep``: the project folder (its store) is kept under that folder, for analysis after the run."""
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(tempfile.mkdtemp(dir=keep, prefix=f"{name}-")) if keep
          else tempfile.TemporaryDirectory()) as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlruns/mlflow.db"}
        (Path(tmp) / "mlruns").mkdir()
        t0 = time.perf_counter()
        sweep = subprocess.run([str(BIN / "mnist-exp"), "sweep", str(exp), "--data", data, "--set", f"seed={seed}",
                                "--name", name], cwd=tmp, env=env, capture_output=True, text=True)
        t_sweep = time.perf_counter() - t0
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        promote = subprocess.run([str(BIN / "mnist-exp"), "promote", name], cwd=tmp, env=env, capture_output=True,
                                 text=True)
        wall = time.perf_counter() - t0
        assert promote.returncode == 0, promote.stdout[-3000:] + promote.stderr[-3000:]
        return {"seed": seed, "whole_command_s": round(wall, 1), "sweep_s": round(t_sweep, 1),
                "promote_s": round(wall - t_sweep, 1), "promote_output": promote.stdout.strip().splitlines(),
                **champion(env["MLFLOW_TRACKING_URI"], name)}


def champion(uri: str, name: str) -> dict:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    v = c.get_model_version_by_alias("mnist-cnn", "champion")
    eid = c.get_experiment_by_name("mnist-exp").experiment_id
    trials = [r for r in c.search_runs([eid], f"tags.`mnist_exp.sweep` = '{name}' and tags.`mnist_exp.kind` = 'trial'",
                                       max_results=1000) if r.info.status == "FINISHED"]
    best = max(trials, key=lambda r: (r.data.metrics.get("objective", float("-inf")), -r.info.start_time))
    members = [m for m in v.tags.get("mnist_exp.ensemble_of", "").split(",") if m]
    ensemble_run = c.get_run(v.tags["mnist_exp.run_id"]) if members else None
    ensemble = ensemble_run.data.metrics if members else {}
    costs = {k: ensemble[k] for k in sorted(ensemble) if k.startswith(("size_bytes", "latency", "single_"))}
    refits = [r for r in c.search_runs([eid], f"tags.`mnist_exp.sweep` = '{name}' and tags.`mnist_exp.kind` = 'refit'")
              if r.info.status == "FINISHED"]
    return {
        "champion_test_accuracy": float(v.tags["metric.test_accuracy"]),
        "champion": f"ensemble of {len(members)}" if members else ("refit" if v.tags.get("mnist_exp.refit_of") else "trial"),
        # every member, a refit standing in for its trial included, with its weight (the ensemble run's params)
        "members": [member(c, m, ensemble_run.data.params) for m in members],
        "ensemble_validation": {k: ensemble.get(k) for k in ("val_accuracy", "val_loss") if k in ensemble},
        "refit": [{"run_id": r.info.run_id, "of_trial_run": r.data.tags.get("mnist_exp.refit_of"),
                   "test_accuracy": r.data.metrics.get("test_accuracy")} for r in refits],
        "best_single_trial": {"trial": best.data.tags.get("mnist_exp.trial_id"),
                              "objective": best.data.metrics.get("objective"),
                              "test_accuracy": best.data.metrics.get("test_accuracy")},
        "trials_finished": len(trials),
        "ensemble_costs": costs,  # size on disk and latency per image, the ensemble's and the best single model's
        "trial_test_accuracies": sorted((round(r.data.metrics.get("test_accuracy", float("nan")), 4) for r in trials),
                                        reverse=True),
    }


def member(c, run_id: str, params: dict) -> dict:
    r = c.get_run(run_id)
    weight = next((v for k, v in params.items() if run_id in v or k.endswith(run_id)), None)
    return {"run_id": run_id, "kind": r.data.tags.get("mnist_exp.kind"), "trial": r.data.tags.get("mnist_exp.trial_id"),
            "val_accuracy": r.data.metrics.get("best_val_accuracy"), "test_accuracy": r.data.metrics.get("test_accuracy"),
            "weight_param": weight}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep", type=Path, help="keep each seed's project folder (store, artifacts) under this folder")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench

    exp = Path(args.experiment).resolve()
    name = exp.stem
    res = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
           "experiment": f"experiments/{exp.name}", "runs": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        row = run_seed(exp, str(Path(args.data).resolve()), seed, f"{name}-{seed}", args.keep)
        print(f"seed {seed}: champion ({row['champion']}) {row['champion_test_accuracy']:.4f}, best single trial "
              f"{row['best_single_trial']['test_accuracy']:.4f}, {row['trials_finished']} trials, whole command "
              f"{row['whole_command_s']:.0f} s", flush=True)
        res["runs"].append(row)
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
