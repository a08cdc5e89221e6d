"""Replay ensemble selection on kept stores (``results_runs.py --keep DIR``): which criterion chooses better members?

    python benchmarks/ensemble_selection.py /tmp/keep/best-43-*/mlruns/mlflow.db --sweep best-43 --k 7 \
        --out benchmarks/ensemble-selection.json

For each store: the sweep's library as ``promote`` builds it (finished trials that kept probabilities, ranked by
the objective, the refit standing in for its trial on test), then greedy selection with replacement on validation
by each criterion (``results/ensemble_select.py``), and two plain baselines (the best trial alone; the top K by
validation accuracy, equal weights). Prints and writes the validation and test accuracy of each; test is read only
to report, never to choose.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def replay(db: str, sweep: str, k: int) -> dict:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    from mnist_exp import tracking
    from mnist_exp.results import ensemble, ensemble_select as es
    from mnist_exp.tracking import keys

    uri = f"sqlite:///{Path(db).resolve()}"
    tracking.configure(uri, "mnist-exp")
    c = MlflowClient(uri)
    eid = c.get_experiment_by_name("mnist-exp").experiment_id
    [parent] = [r for r in c.search_runs([eid], f"tags.`{keys.TAG_KIND}` = 'sweep' and tags.`{keys.TAG_SWEEP}` = '{sweep}'")
                if not r.data.tags.get(keys.TAG_SUPERSEDED)]
    library = ensemble._library(eid, parent.info.run_id, maximize=True)
    subs = ensemble._refits(eid, parent)
    val = [ensemble._load(r, "validation") for r in library]
    test = [ensemble._load(subs.get(r.info.run_id, r), "test") for r in library]
    y_val, y_test = val[0][1], test[0][1]
    pv, pt = [p for p, _ in val], [p for p, _ in test]
    out = {"store": db, "sweep": sweep, "library": [
        {"trial": r.data.tags[keys.TAG_TRIAL], "refit_on_test": r.info.run_id in subs,
         "val_accuracy": es.accuracy(pv[i], y_val), "val_loss": es.log_loss(pv[i], y_val),
         "test_accuracy": es.accuracy(pt[i], y_test)} for i, r in enumerate(library)], "selections": {}}

    def score(name, counts):
        out["selections"][name] = {
            "members": {library[i].data.tags[keys.TAG_TRIAL]: int(n) for i, n in enumerate(counts) if n},
            "val_accuracy": es.accuracy(es.mean_of(pv, counts), y_val),
            "test_accuracy": es.accuracy(es.mean_of(pt, counts), y_test)}

    for criterion in es.CRITERIA:
        sel = es.greedy(pv, y_val, k, ensemble.STEPS_PER_MEMBER * k, criterion)
        score(f"greedy on {criterion}", sel.counts)
    by_acc = np.argsort([-es.accuracy(p, y_val) for p in pv], kind="stable")
    score("best trial alone", [1 if i == by_acc[0] else 0 for i in range(len(pv))])
    score(f"top {k} by val accuracy, equal weights", [1 if i in set(by_acc[:k]) else 0 for i in range(len(pv))])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dbs", nargs="+")
    ap.add_argument("--sweep", required=True, action="append", help="the sweep of each store, in order")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--out")
    a = ap.parse_args()
    results = [replay(db, sweep, a.k) for db, sweep in zip(a.dbs, a.sweep)]
    for r in results:
        print(f"{r['sweep']}: library of {len(r['library'])}")
        for name, s in r["selections"].items():
            print(f"  {name:45s} val {s['val_accuracy']:.4f}  test {s['test_accuracy']:.4f}  members {s['members']}")
    if a.out:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        Path(a.out).write_text(json.dumps({"machine": {"cpu": cpu, "python": platform.python_version()},
                                           "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                                           "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
