"""The sweep's oracle: Keras Tuner's own, with atomic state files and a wall-clock budget.

``make_oracle`` builds the oracle of the experiment's tuner kind (``KINDS``) with ``SweepOracleMixin`` in
front: oracle and trial files are written by rename (a process killed at any instant leaves a loadable
project), ``create_trial`` starts only the trials the budget (``budget.py``) admits, every trial's end
reaches ``on_trial_ended`` (the progress line), whichever process ran it, and the objective a trial reports
after each epoch (``update_trial``, local or over Keras Tuner's gRPC protocol) may be answered STOPPED by the
sweep's pruner (``pruners.py``): the trial then ends after that epoch, COMPLETED with its best epoch so far.
"""

from __future__ import annotations

import functools
import os

import keras_tuner as kt
from keras_tuner.src.engine.metrics_tracking import MetricsTracker  # not exported by keras_tuner 1.4.8
from keras_tuner.src.tuners.gridsearch import LinkedList

from mnist_exp.model import fidelity
from mnist_exp.runtime import faults
from mnist_exp.runtime.terminal import hms
from mnist_exp.search import pruners
from mnist_exp.search.budget_plan import HyperbandPlanMixin
from mnist_exp.search.oracle_lock import synchronized
from mnist_exp.search.sweep_state import atomic_write_json
from mnist_exp.search.bayesian_oracle import BayesianOracle
from mnist_exp.search.tpe_oracle import TPEOracle
from mnist_exp.spec.experiment import TUNER_KINDS, Experiment


class ResumableGridSearchOracle(kt.oracles.GridSearchOracle):
    """Keras Tuner 1.4.8's grid oracle, able to continue after a reload.

    The grid keeps the order of its combinations (``_ordered_ids``) and the trials whose next combination is
    still to be made (``_populate_next``) in memory only; reloaded, it fails on its next trial (KeyError) or
    ends early. Both are rebuilt from the trials: the combinations in the grid's own order, every trial queued
    (those whose next combination was made already are skipped by the grid itself)."""

    def reload(self):
        super().reload()
        order = sorted(self.trials, key=functools.cmp_to_key(
            lambda a, b: self._compare(self.trials[a].hyperparameters.values, self.trials[b].hyperparameters.values)))
        self._ordered_ids = LinkedList()
        for trial_id in order:
            self._ordered_ids.insert(trial_id)
        self._populate_next = [t for t in self.start_order if t in self.trials]


# A tuner kind: its oracle and Keras Tuner's tuner class; its name is also listed in spec.experiment.TUNER_KINDS.
KINDS = {
    "random": (kt.oracles.RandomSearchOracle, kt.Tuner),
    "bayesian": (BayesianOracle, kt.Tuner),  # Keras Tuner's, learning from observations too (bayesian_oracle.py)
    "grid": (ResumableGridSearchOracle, kt.Tuner),
    "hyperband": (kt.oracles.HyperbandOracle, kt.Hyperband),
    "tpe": (TPEOracle, kt.Tuner),  # Optuna's TPE sampler (tpe_oracle.py)
}
assert set(KINDS) == set(TUNER_KINDS), "a tuner kind is one entry here and its name in spec.experiment.TUNER_KINDS"

_STOPPED, _RUNNING = kt.engine.trial.TrialStatus.STOPPED, kt.engine.trial.TrialStatus.RUNNING
_COMPLETED = kt.engine.trial.TrialStatus.COMPLETED


def _history(trial, objective: str) -> dict[int, float]:
    """The trial's reported objective by epoch (0-based), executions averaged."""
    if not trial.metrics.exists(objective):
        return {}
    return {int(o.step): float(sum(o.value) / len(o.value)) for o in trial.metrics.get_history(objective)}


class SweepOracleMixin:
    """Oracle state and trial files written by rename: never half-written. With a ``budget`` it starts only
    trials that should finish in time; ``on_trial_ended(oracle, trial)`` hears every trial's end; with a
    ``mirror`` (state_mirror.StateMirror) every save reaches the tracking server before the oracle goes on."""

    def __init__(self, *args, budget=None, configured_epochs: int = 10, on_trial_ended=None,
                 pruner: pruners.Pruner | None = None, warm_start=(), mirror=None, **kwargs):
        self.budget = budget  # budget.Budget, or None
        self.configured_epochs = configured_epochs  # training.epochs: trials whose length Hyperband does not set
        self._on_trial_ended = on_trial_ended
        self.pruner = pruner
        self.pruned: dict[str, int] = {}  # trial id -> the epoch (1-based) after which the pruner stopped it
        self.warm_start = [dict(c) for c in warm_start]  # the first trials' configurations (warm_start.py)
        self._mirror = mirror
        super().__init__(*args, **kwargs)

    def populate_space(self, trial_id):
        """The n-th trial of a warm-started sweep is its n-th earlier configuration (the space's defaults for what
        it does not set); later ones are the oracle's own."""
        n = len(self.trials)  # the trials before this one
        if n >= len(self.warm_start):
            return super().populate_space(trial_id)
        hps = self.hyperparameters.copy()
        values = {}
        for hp in hps.space:
            if hps.is_active(hp):
                hps.values[hp.name] = values[hp.name] = self.warm_start[n].get(hp.name, hp.default)
        self._tried_so_far.add(self._compute_values_hash(values))
        return {"status": _RUNNING, "values": values}

    def get_state(self):
        return {**super().get_state(), "pruned": self.pruned}

    def set_state(self, state):
        super().set_state(state)
        self.pruned = dict(state.get("pruned", {}))  # absent in the state of a sweep from before pruning

    @synchronized
    def update_trial(self, trial_id, metrics, step=0):
        """Record the trial's objective after epoch ``step`` (0-based); answer STOPPED if the pruner stops it."""
        trial = super().update_trial(trial_id, metrics, step)
        if self.pruner is None or trial.status != _RUNNING:
            return trial
        if trial_id not in self.pruned:
            others = [_history(t, self.objective.name) for tid, t in self.trials.items()
                      if tid != trial_id and t.status in (_RUNNING, _COMPLETED)]
            if (not pruners.should_prune(self.pruner, _history(trial, self.objective.name), others, step)
                    and self._budget_lets_continue(trial, step + 1)):
                return trial
            self.pruned[trial_id] = step + 1
            self.save()
            faults.point("after_prune_decided")
        elif step + 1 < self.pruned[trial_id]:  # a later execution of the trial, not yet where it was stopped
            return trial
        return kt.engine.trial.Trial(trial.hyperparameters, trial_id=trial_id, status=_STOPPED)

    def _budget_lets_continue(self, trial, done: int) -> bool:
        """Whether the budget holds the trial's epochs up to the pruner's next decision (and the refit of the
        trial, were it to end best); if not, it stops here, as pruned: its epochs so far are its result."""
        if self.budget is None:
            return True
        first, last = fidelity.trial_epochs(trial.hyperparameters.values, self.configured_epochs)
        more = self.pruner.next_decision(done, last - first) - done
        if more <= 0 or self.budget.fits(more, max(last, self._best_trial_epochs())):
            return True
        print(f"budget {hms(self.budget.seconds)}: trial {trial.trial_id} stopped after epoch {first + done}: its next "
              f"{more} epoch(s) would not fit in the {hms(max(0.0, self.budget.left()))} left", flush=True)
        return False

    def get_best_trials(self, num_trials=1):
        """Keras Tuner's ranking, with pruned trials after every trial that ran its course."""
        ranked = super().get_best_trials(len(self.trials))
        return sorted(ranked, key=lambda t: t.trial_id in self.pruned)[:num_trials]

    @synchronized
    def create_trial(self, tuner_id):
        refused = self.budget.refused_trial if self.budget is not None else None
        if refused and self._retry_queue and self._retry_queue[-1] == refused[0] and not self.budget.fits(*refused[1:]):
            # still refused: answered without taking it off the queue (waiting workers ask every second)
            self.tuner_ids.discard(tuner_id)
            return kt.engine.trial.Trial(self.hyperparameters.copy(), status=_STOPPED)
        trial = super().create_trial(tuner_id)
        if trial.status == _RUNNING and (trial.metrics.exists(self.objective.name) or trial.trial_id in self.pruned):
            # A trial run again (after a kill, a lost store or a silent worker): its epochs start afresh.
            trial.metrics = MetricsTracker()
            self.pruned.pop(trial.trial_id, None)
            self._save_trial(trial)
            self.save()
        if self.budget is None or trial.status != _RUNNING:
            return trial
        first, last = fidelity.trial_epochs(trial.hyperparameters.values, self.configured_epochs)
        if self.pruner is None:
            admitted = self.budget.admits(trial.trial_id, last - first, max(last, self._best_trial_epochs()))
        else:  # it needs to fit until the pruner's first decision; then the pruner and the budget decide again
            admitted = self.budget.admits(trial.trial_id, self.pruner.next_decision(0, last - first),
                                          self._best_trial_epochs())
        if admitted:
            return trial
        # Not started: it waits at the head of the retry queue, so a resume with more budget runs it next.
        self.ongoing_trials.pop(tuner_id, None)
        self._retry_queue.append(trial.trial_id)
        self.tuner_ids.discard(tuner_id)
        self.save()
        return kt.engine.trial.Trial(self.hyperparameters.copy(), status=_STOPPED)

    def _best_trial_epochs(self) -> int:
        """How long the best trial so far trained from its first epoch: its refit would train as long."""
        best = self.get_best_trials(1)
        return fidelity.trial_epochs(best[0].hyperparameters.values, self.configured_epochs)[1] if best else 0

    def save(self):
        atomic_write_json(self._get_oracle_fname(), self.get_state())
        if self._mirror is not None:
            self._mirror.push()

    def _save_trial(self, trial):
        atomic_write_json(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())
        if trial.status == "COMPLETED":  # the trial file says COMPLETED, oracle.json not yet
            faults.point("after_trial_file_saved")

    @synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        if self.budget is not None:
            if trial.status == "COMPLETED":
                first, last = fidelity.trial_epochs(trial.hyperparameters.values, self.configured_epochs)
                self.budget.trial_ended(trial.trial_id, self.pruned.get(trial.trial_id, last - first))
            else:  # a failed trial's length says nothing about the next one's
                self.budget.trial_lost(trial.trial_id)
        if self._on_trial_ended is not None:
            self._on_trial_ended(self, self.trials[trial.trial_id])


def make_oracle(exp: Experiment, hyperparameters, budget=None, on_trial_ended=None, mixins: tuple = (),
                warm_start=None, mirror=None):
    """The oracle of ``exp.tuner.kind``. ``mixins``: put before ours (a chief's trial leases); ``warm_start``:
    what a warm-started sweep starts from (warm_start.WarmStart); ``mirror``: the server's copy of its state."""
    oracle_cls, _ = KINDS[exp.tuner.kind]
    kwargs = dict(
        objective=kt.Objective(exp.objective.name, exp.objective.direction),
        seed=exp.seed,
        hyperparameters=hyperparameters,
        tune_new_entries=False,
        allow_new_entries=True,
        max_consecutive_failed_trials=exp.tuner.max_consecutive_failed_trials,
    )
    if exp.tuner.kind == "hyperband":
        kwargs.update(max_epochs=exp.tuner.max_epochs, factor=exp.tuner.factor,
                      hyperband_iterations=exp.tuner.hyperband_iterations)
    else:
        kwargs["max_trials"] = exp.tuner.max_trials
    if warm_start is not None and warm_start.observations:  # only model-based kinds are given any
        kwargs["observations"] = warm_start.observations
    tu = exp.tuner
    if tu.kind == "hyperband":  # brackets planned for the budget (budget_plan.py)
        mixins, kwargs["parallel"] = (*mixins, HyperbandPlanMixin), tu.parallel_trials
    cls = type(f"Sweep{oracle_cls.__name__}", (*mixins, SweepOracleMixin, oracle_cls), {})
    pruner = None if tu.pruner == "none" else pruners.Pruner(
        tu.pruner, exp.objective.direction, tu.pruner_warmup_epochs, tu.pruner_min_trials, tu.pruner_reduction_factor)
    return cls(budget=budget, configured_epochs=exp.training.epochs, on_trial_ended=on_trial_ended, pruner=pruner,
               warm_start=warm_start.configs if warm_start is not None else (), mirror=mirror, **kwargs)


def requeue_orphans(oracle, ids: list[str]) -> list[str]:
    """Trials that no tuner will finish, into Keras Tuner's retry queue so the next tuner to ask runs
    them: those left running by tuner ids that will not ask again (a sweep resumed with fewer parallel
    workers), and those a kill -9 inside ``create_trial`` left RUNNING in their trial file but not in
    oracle.json (Keras Tuner would count them against max_trials and never run them)."""
    orphans = [tid for tid in list(oracle.ongoing_trials) if tid not in ids]
    for tid in orphans:
        oracle._retry_queue.append(oracle.ongoing_trials.pop(tid).trial_id)
    held = {t.trial_id for t in oracle.ongoing_trials.values()} | set(oracle._retry_queue)
    for trial_id, t in oracle.trials.items():
        if t.status == "RUNNING" and trial_id not in held:
            oracle._retry_queue.append(trial_id)
            if trial_id not in oracle.start_order:
                oracle.start_order.append(trial_id)
            orphans.append(trial_id)
    return orphans


def planned_trials(oracle) -> int:
    """How many trials the search plans: max_trials, or every Hyperband bracket's trials."""
    if isinstance(oracle, kt.oracles.HyperbandOracle):
        per_iteration = sum(
            oracle._get_size(b, r) for b in range(oracle._get_num_brackets()) for r in range(oracle._get_num_rounds(b))
        )
        return per_iteration * oracle.hyperband_iterations
    return oracle.max_trials
