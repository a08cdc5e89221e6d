"""A trial that continues where an interrupted attempt stopped: which earlier run to reopen, and its best epoch.

A trial's attempt killed mid-fit (kill -9, Ctrl-C, a lost worker whose lease expired) leaves its run KILLED, or
RUNNING under a process that lost it, with a per-epoch checkpoint in the store (model/resume.py). When the
trial runs again, on this machine or on whichever worker the chief gives it to, that run is reopened and the fit
continues from its last completed epoch: one run per trial, curves continuous.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mnist_exp import tracking
from mnist_exp.model import fidelity, resume
from mnist_exp.tracking import keys


def fit_identity(sw, hp_values: dict) -> str:
    """What a trial's checkpoint must match: its hyperparameters (Hyperband's bookkeeping included), data, seed."""
    exp = sw.exp
    return resume.identity(hp_values, sw.ds.fingerprint + sw.ds.test_fingerprint, exp.seed,
                           fidelity.trial_epochs(hp_values, exp.training.epochs)[1], {"experiment": resume.fit_settings(exp)})


def resumable(sw, trial) -> resume.Resume | None:
    """The checkpoint of the trial's interrupted attempt, if one can be continued (one execution per trial only:
    with several, each execution is a fit of its own)."""
    if sw.exp.tuner.executions_per_trial != 1:
        return None
    runs = [r for r in tracking.trial_runs(sw.experiment_id, sw.parent_run_id, trial_id=trial.trial_id)
            if r.info.status in (keys.KILLED, keys.RUNNING) and keys.TAG_CHECKPOINT in r.data.tags
            and keys.TAG_SUPERSEDED not in r.data.tags]
    echo = f"[sweep {sw.exp.name}{' ' + sw.worker if sw.worker else ''}] trial {trial.trial_id}"
    return resume.find(runs, fit_identity(sw, trial.hyperparameters.values), echo)


def best_epoch(history: dict, objective) -> int | None:
    """The best epoch (1-based) of a whole history on the objective."""
    values = history.get(objective.name)
    if not values:
        return None
    pick = max if objective.direction == "max" else min
    return values.index(pick(values)) + 1


def restore_best(found: resume.Resume | None, history: dict, objective, path: str) -> None:
    """Where the trial's best epoch came before the resume, put its weights where Keras Tuner keeps the best
    epoch's (``path``), which this process's fit only wrote for the epochs it trained."""
    if found is None or found.best_weights is None:
        return
    best = best_epoch(history, objective)
    if best is not None and best <= found.epoch:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found.best_weights, path)


def remove_leftovers(sw) -> int:
    """Delete the checkpoints of the sweep's runs that will never be resumed (the sweep ended: every trial it
    ran is recorded); returns how many."""
    from mnist_exp.tracking import checkpoints

    left = [r for r in tracking.trial_runs(sw.experiment_id, sw.parent_run_id)
            if r.info.status != keys.RUNNING and keys.TAG_CHECKPOINT in r.data.tags]
    for run in left:
        checkpoints.remove(run.info.run_id)
    return len(left)
