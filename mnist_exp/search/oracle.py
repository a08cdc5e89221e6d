"""The sweep's oracle: Keras Tuner's own, with atomic state files and a wall-clock budget.

``make_oracle`` builds the oracle of the experiment's tuner kind (``KINDS``) with ``SweepOracleMixin`` in
front: oracle and trial files are written by rename (a process killed at any instant leaves a loadable
project), ``create_trial`` starts only the trials the budget (``budget.py``) admits, and every trial's end
reaches ``on_trial_ended`` (the progress line), whichever process ran it.
"""

from __future__ import annotations

import os

import keras_tuner as kt

from mnist_exp.model import fidelity
from mnist_exp.runtime import faults
from mnist_exp.search.sweep_state import atomic_write_json
from mnist_exp.spec.experiment import TUNER_KINDS, Experiment

# A tuner kind: its oracle and Keras Tuner's tuner class; its name is also listed in spec.experiment.TUNER_KINDS.
KINDS = {
    "random": (kt.oracles.RandomSearchOracle, kt.Tuner),
    "bayesian": (kt.oracles.BayesianOptimizationOracle, kt.Tuner),
    "grid": (kt.oracles.GridSearchOracle, kt.Tuner),
    "hyperband": (kt.oracles.HyperbandOracle, kt.Hyperband),
}
assert set(KINDS) == set(TUNER_KINDS), "a tuner kind is one entry here and its name in spec.experiment.TUNER_KINDS"

_STOPPED, _RUNNING = kt.engine.trial.TrialStatus.STOPPED, kt.engine.trial.TrialStatus.RUNNING


class SweepOracleMixin:
    """Oracle state and trial files written by rename: never half-written. With a ``budget`` it starts only
    trials that should finish in time; ``on_trial_ended(oracle, trial)`` hears every trial's end."""

    def __init__(self, *args, budget=None, configured_epochs: int = 10, on_trial_ended=None, **kwargs):
        self.budget = budget  # budget.Budget, or None
        self.configured_epochs = configured_epochs  # training.epochs: trials whose length Hyperband does not set
        self._on_trial_ended = on_trial_ended
        super().__init__(*args, **kwargs)

    @kt.synchronized
    def create_trial(self, tuner_id):
        refused = self.budget.refused_trial if self.budget is not None else None
        if refused and self._retry_queue and self._retry_queue[-1] == refused[0] and not self.budget.fits(refused[1]):
            # still refused: answered without taking it off the queue (waiting workers ask every second)
            self.tuner_ids.discard(tuner_id)
            return kt.engine.trial.Trial(self.hyperparameters.copy(), status=_STOPPED)
        trial = super().create_trial(tuner_id)
        if self.budget is None or trial.status != _RUNNING:
            return trial
        first, last = fidelity.trial_epochs(trial.hyperparameters.values, self.configured_epochs)
        if self.budget.admits(trial.trial_id, last - first):
            return trial
        # Not started: it waits at the head of the retry queue, so a resume with more budget runs it next.
        self.ongoing_trials.pop(tuner_id, None)
        self._retry_queue.append(trial.trial_id)
        self.tuner_ids.discard(tuner_id)
        self.save()
        return kt.engine.trial.Trial(self.hyperparameters.copy(), status=_STOPPED)

    def save(self):
        atomic_write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        atomic_write_json(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())
        if trial.status == "COMPLETED":  # the trial file says COMPLETED, oracle.json not yet
            faults.point("after_trial_file_saved")

    def end_trial(self, trial):
        super().end_trial(trial)
        if self.budget is not None:
            if trial.status == "COMPLETED":
                self.budget.trial_ended(trial.trial_id)
            else:  # a failed trial's length says nothing about the next one's
                self.budget.trial_lost(trial.trial_id)
        if self._on_trial_ended is not None:
            self._on_trial_ended(self, self.trials[trial.trial_id])


def make_oracle(exp: Experiment, hyperparameters, budget=None, on_trial_ended=None, mixins: tuple = ()):
    """The oracle of ``exp.tuner.kind``. ``mixins``: put before ours (a chief's trial leases)."""
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
    cls = type(f"Sweep{oracle_cls.__name__}", (*mixins, SweepOracleMixin, oracle_cls), {})
    return cls(budget=budget, configured_epochs=exp.training.epochs, on_trial_ended=on_trial_ended, **kwargs)


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
