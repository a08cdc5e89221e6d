"""Search strategies side by side, each sweep in the same wall-clock budget on the same data and seed.

    python benchmarks/search.py --data ../shared/data/mnist.npz --budget 20m --seeds 42 43 --out benchmarks/search.json

Runs, for each seed, `mnist-exp sweep benchmarks/search.yaml` as `random` without pruning, `random` + `asha`
and `tpe` + `asha` (and `bayesian` + `asha` with --bayesian), one after the other in fresh stores, then reads each
sweep's trials back with the API. Per sweep: trials finished, trials pruned, epochs trained, the best validation
accuracy and that trial's test accuracy, and the minutes to reach the unpruned random sweep's best (or none).
Prints a table and writes JSON with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STRATEGIES = [("random", "none"), ("random", "asha"), ("tpe", "asha")]


def cpu() -> str:
    return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor())


def run_sweep(folder: Path, data: str, budget: str, seed: int, kind: str, pruner: str, train_size: int) -> dict:
    name = f"{kind}-{pruner}-{seed}"
    cmd = [str(BIN / "mnist-exp"), "sweep", str(HERE / "search.yaml"), "--name", name, "--data", data,
           "--budget", budget, "--set", f"seed={seed}", "--set", f"tuner.kind={kind}",
           "--set", f"tuner.pruner={pruner}", "--set", f"data.train_size={train_size}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    import mnist_exp

    df = mnist_exp.compare([name], tracking_uri=env["MLFLOW_TRACKING_URI"])
    done = df[df["status"] == "FINISHED"].sort_values("start_time")
    unpruned = done[done["pruned"].isna()]
    best = unpruned.loc[unpruned["objective"].idxmax()] if not unpruned.empty else None
    return {"sweep": name, "kind": kind, "pruner": pruner, "seed": seed, "wall_s": round(wall, 1),
            "trials_finished": int(len(done)), "trials_pruned": int(done["pruned"].notna().sum()),
            "epochs_trained": int(done["epochs_run"].sum()),
            "best_val_accuracy": None if best is None else float(best["objective"]),
            "best_test_accuracy": None if best is None else float(best["test_accuracy"]),
            "curve": [(float((r.start_time - done["start_time"].min()) / 60000), float(r.objective))
                      for r in done.itertuples()]}


def minutes_to(result: dict, target: float | None) -> float | None:
    if target is None:
        return None
    return next((round(m, 1) for m, v in result["curve"] if v >= target), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="MNIST .npz (Keras layout) or IDX folder")
    ap.add_argument("--budget", default="20m")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    ap.add_argument("--train-size", type=int, default=20000, help="digits of the training split used (default 20,000)")
    ap.add_argument("--bayesian", action="store_true", help="also bayesian + asha")
    ap.add_argument("--out", help="JSON file to write")
    args = ap.parse_args()
    strategies = STRATEGIES + ([("bayesian", "asha")] if args.bayesian else [])
    results = []
    for seed in args.seeds:
        for kind, pruner in strategies:
            with tempfile.TemporaryDirectory(prefix="mnist-exp-search-") as tmp:
                (Path(tmp) / "mlruns").mkdir()
                results.append(run_sweep(Path(tmp), str(Path(args.data).resolve()), args.budget, seed, kind, pruner,
                                         args.train_size))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "curve"}), flush=True)
        reference = next(r["best_val_accuracy"] for r in results if r["seed"] == seed and r["pruner"] == "none")
        for r in results:
            if r["seed"] == seed:
                r["minutes_to_unpruned_best"] = minutes_to(r, reference)
    print(f"\n{'sweep':<22}{'trials':>7}{'pruned':>7}{'epochs':>7}{'best val':>10}{'its test':>10}{'min to ref':>11}")
    for r in results:
        print(f"{r['sweep']:<22}{r['trials_finished']:>7}{r['trials_pruned']:>7}{r['epochs_trained']:>7}"
              f"{r['best_val_accuracy'] or float('nan'):>10.4f}{r['best_test_accuracy'] or float('nan'):>10.4f}"
              f"{str(r['minutes_to_unpruned_best']):>11}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "what": "search strategies in the same budget (benchmarks/search.py)",
            "machine": {"cpu": cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
            "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
            "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
