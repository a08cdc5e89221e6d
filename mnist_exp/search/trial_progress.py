"""The sweep's line per finished trial: how far, the best so far, the time left (and the budget's)."""

from __future__ import annotations

import time

from mnist_exp.runtime.terminal import hms
from mnist_exp.search.oracle import planned_trials


def progress_line(oracle, trial, sw) -> str:
    ended = [t for t in oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID")]
    total = max(planned_trials(oracle), len(ended))
    name = sw.exp.objective.name
    result = f"{name}={trial.score:.4f}" if trial.status == "COMPLETED" and trial.score is not None else trial.status
    if trial.trial_id in getattr(oracle, "pruned", {}):
        result += f" (pruned after epoch {oracle.pruned[trial.trial_id]})"
    best = [t for t in oracle.get_best_trials(1) if t.score is not None]
    best_txt = f"best {best[0].score:.4f} (trial {best[0].trial_id})" if best else "best -"
    elapsed = time.time() - sw.started
    # Rate over this invocation: with parallel trials it already counts the trials running side by side.
    eta = elapsed / sw.ended_here * max(total - len(ended), 0) if sw.ended_here else 0.0
    budget = oracle.budget
    left = f" | budget left {hms(max(0.0, budget.left()))}" if budget is not None else ""
    if budget is not None:
        eta = min(eta, max(0.0, budget.left()))
    return (
        f"[sweep {sw.exp.name}] trial {len(ended)}/{total} ({trial.trial_id}): {result} | {best_txt} | "
        f"elapsed {hms(elapsed)} | ETA {hms(eta)}{left}"
    )


def progress_printer(sw):
    """The oracle's ``on_trial_ended``: counts the trial for the ETA and prints its line."""

    def on_trial_ended(oracle, trial):
        sw.trial_ended_here()
        print(progress_line(oracle, trial, sw), flush=True)

    return on_trial_ended


def start_line(exp, ds, oracle, parent_run_id: str, resumed: bool) -> str:
    """The sweep's first line: what it plans, new or resumed, its parent run and its data."""
    done = sum(t.status == "COMPLETED" for t in oracle.trials.values())
    at_once = f", {exp.tuner.parallel_trials} at once" if exp.tuner.parallel_trials > 1 else ""
    if oracle.budget is not None:
        at_once += f", budget {hms(oracle.budget.seconds)}{' and a refit' if exp.tuner.refit else ''}"
    return (f"sweep {exp.name} ({exp.tuner.kind}, {planned_trials(oracle)} trials planned{at_once}, objective "
            f"{exp.objective.direction} {exp.objective.name}): "
            f"{'resuming, ' + str(done) + ' trial(s) done' if resumed else 'new'}; "
            f"parent run {parent_run_id}; {ds.sizes['train']} train / {ds.sizes['val']} val / "
            f"{ds.sizes['test']} test digits")
