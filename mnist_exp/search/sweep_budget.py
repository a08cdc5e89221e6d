"""The budget a sweep runs under (``tuner.budget`` / ``--budget``): checked when the sweep is created, built for
its oracle, and, on a resume, primed with the lengths of the trials that already ran (on any machine: they are read
from the tracking store)."""

from __future__ import annotations

from mnist_exp import tracking
from mnist_exp.model.fidelity import decided_by_tuner, trial_epochs
from mnist_exp.search import budget_plan
from mnist_exp.search.budget import Budget
from mnist_exp.spec.durations import parse_duration
from mnist_exp.tracking import keys


def make(exp, ds, resumed_from: tuple[str, str] | None = None):
    """The oracle's Budget (budget.py), keeping room for the refit when there is one; None without a budget.
    ``resumed_from`` (experiment id, parent run id): the resumed sweep whose finished trials it starts from."""
    if exp.tuner.budget is None:
        return None
    return Budget(parse_duration(exp.tuner.budget), refit=exp.tuner.refit, refit_scale=refit_scale(ds),
                  history=trial_lengths(exp, *resumed_from) if resumed_from else ())


def refit_scale(ds) -> float:
    return (len(ds.y_train) + len(ds.y_val)) / max(1, len(ds.y_train))


def check(exp, space, ds) -> None:
    """A new sweep's budget must hold one of its shortest trials and its refit (budget_plan.py), timed here."""
    from mnist_exp.model.timing import trial_cost

    cost = trial_cost(exp, space.to_hyperparameters(fixed=exp.hp), ds)
    shortest = 1 if decided_by_tuner(exp.tuner.kind) else exp.training.epochs
    budget_plan.check_start(str(exp.path), parse_duration(exp.tuner.budget), cost, shortest, exp.tuner.refit,
                            refit_scale(ds))


def trial_lengths(exp, experiment_id: str, parent_run_id: str) -> list[tuple[int, float]]:
    """(epochs, seconds) of the sweep's finished trials, read from their runs (the store every machine of the
    sweep shares), so that a resumed budget estimates before its first trial ends."""
    first_run = {}  # trial id -> its first FINISHED run (the one a resume adopts; tracked_tuner.py)
    for r in sorted(tracking.trial_runs(experiment_id, parent_run_id), key=lambda r: r.info.start_time):
        if r.info.status == keys.FINISHED and keys.METRIC_TRIAL_TIME in r.data.metrics:
            first_run.setdefault(r.data.tags.get(keys.TAG_TRIAL), r)
    out = []
    for r in first_run.values():
        first, last = trial_epochs(r.data.params, exp.training.epochs)
        ran = int(r.data.metrics.get(keys.METRIC_EPOCHS_RUN, 0))  # fewer when early stopping ended it
        out.append((ran if 0 < ran < last - first else last - first, r.data.metrics[keys.METRIC_TRIAL_TIME]))
    return out
