"""The refit (``tuner.refit``): the best trial's configuration trained again on every training digit.

The search selects on the validation split; the chosen configuration is then trained from scratch
on train + validation for as many epochs as the trial trained (Hyperband's included), as a run of
its own under the sweep's parent, tagged ``mnist_exp.kind=refit`` and ``mnist_exp.refit_of=<trial
run>``. ``promote`` registers the refit when the best trial has one. Done once per trial run: a
resumed sweep finds the FINISHED refit and does not train it again.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mnist_exp import tracking
from mnist_exp.model import fidelity
from mnist_exp.model.data import Dataset
from mnist_exp.model.tracked_run import run_train
from mnist_exp.runtime import faults
from mnist_exp.runtime.terminal import hms
from mnist_exp.spec.levers import HP_DEFAULTS
from mnist_exp.spec.space import load_space
from mnist_exp.tracking import keys


def all_training(ds: Dataset) -> Dataset:
    """The dataset with its validation digits moved back into training (test untouched)."""
    empty = ds.x_val[:0], ds.y_val[:0]
    return dataclasses.replace(ds, x_train=np.concatenate([ds.x_train, ds.x_val]),
                               y_train=np.concatenate([ds.y_train, ds.y_val]), x_val=empty[0], y_val=empty[1])


def refit_epochs(hp_values: dict, configured: int, metrics: dict) -> int:
    """The trial's length from scratch; an early-stopped trial's epochs run instead."""
    first, last = fidelity.trial_epochs(hp_values, configured)
    run = int(metrics.get("epochs_run", last - first))
    return last if run >= last - first else first + run


def refit_best(sw, oracle, uri: str) -> str | None:
    """Refit the oracle's best trial (if not done yet) and return the refit's run id, or None (said why)."""
    exp, name = sw.exp, sw.exp.name
    best = [t for t in oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not best:
        return None
    trial = best[0]
    runs = [r for r in tracking.trial_runs(sw.experiment_id, sw.parent_run_id, trial_id=trial.trial_id)
            if r.info.status == keys.FINISHED]
    if not runs:
        print(f"[sweep {name}] refit: trial {trial.trial_id} has no finished run; nothing refitted", flush=True)
        return None
    trial_run = min(runs, key=lambda r: r.info.start_time)
    done = [r for r in tracking.refit_runs(sw.experiment_id, sw.parent_run_id, trial_run.info.run_id)
            if r.info.status == keys.FINISHED]
    if done:  # refitted by an earlier invocation: the sweep's result is still the refit's
        if keys.METRIC_TEST_ACCURACY in done[0].data.metrics:
            tracking.log_metrics({keys.METRIC_TEST_ACCURACY: done[0].data.metrics[keys.METRIC_TEST_ACCURACY]},
                                 run_id=sw.parent_run_id)
        return done[0].info.run_id
    values = {k: v for k, v in trial.hyperparameters.values.items() if k in HP_DEFAULTS}
    epochs = refit_epochs(trial.hyperparameters.values, exp.training.epochs, trial_run.data.metrics)
    ds = all_training(sw.ds)
    budget = getattr(oracle, "budget", None)
    if budget is not None:  # room was kept for the refit while trials started: it runs, said when it may run over
        need = budget.estimate(epochs)
        need = need * len(ds.y_train) / max(1, len(sw.ds.y_train)) if need is not None else None
        if need is not None and need > budget.left():
            print(f"[sweep {name}] refit of trial {trial.trial_id} needs ~{hms(need)}, {hms(max(0, budget.left()))} "
                  "of the budget left: it may run over", flush=True)
    refit_exp = dataclasses.replace(
        exp, hp=values,
        training=dataclasses.replace(exp.training, epochs=epochs, early_stopping_patience=None),
        data=dataclasses.replace(exp.data, validation_split=0.0),
        objective=dataclasses.replace(exp.objective, name="accuracy", direction="max"))
    print(f"[sweep {name}] refit: trial {trial.trial_id}'s configuration on all {len(ds.y_train)} training digits, "
          f"{epochs} epoch{'s' if epochs != 1 else ''}", flush=True)
    tags = {keys.TAG_KIND: "refit", keys.TAG_SWEEP: name, keys.TAG_TRIAL: trial.trial_id,
            keys.TAG_REFIT_OF: trial_run.info.run_id}
    faults.point("refit_started")
    try:
        result = run_train(refit_exp, load_space(None), ds, uri, tags=tags, parent_run_id=sw.parent_run_id,
                           run_name=f"{name}-{trial.trial_id}-refit")
    except Exception as e:  # the search's result stands; the refit's run says FAILED and why
        why = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        print(f"[sweep {name}] refit of trial {trial.trial_id} failed: {why}; the sweep's trials are kept "
              "(promote registers the trial itself)", flush=True)
        tracking.set_tags({keys.TAG_REFIT_ERROR: why}, run_id=sw.parent_run_id)
        return None
    tracking.set_tags({keys.TAG_REFIT_RUN_ID: result.run_id}, run_id=sw.parent_run_id)
    tracking.log_metrics({keys.METRIC_TEST_ACCURACY: result.test_accuracy}, run_id=sw.parent_run_id)  # the sweep's
    print(f"[sweep {name}] refit of trial {trial.trial_id}: test accuracy {result.test_accuracy:.4f} "
          f"(the trial: {trial_run.data.metrics.get('test_accuracy', float('nan')):.4f}); run {result.run_id}",
          flush=True)
    return result.run_id
