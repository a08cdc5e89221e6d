"""A budgeted sweep planned for the budget it has, not for its longest trial.

- ``check_start``: before anything is written, a budget that cannot hold even one trial and its refit stops the
  sweep with one line naming the smallest budget that can (``ConfigError``: exit 2). What a trial costs is timed
  on this machine (``model/timing.py``, a lower bound), so only a budget that cannot work is refused.
- ``HyperbandPlanMixin``: Keras Tuner's Hyperband plans its brackets for ``max_epochs`` whatever the budget, so a
  short budget spends itself on the first bracket's shortest trials and never reaches a longer rung. Under a
  budget, once the first trial has ended (the budget's own estimate then counts everything a trial costs here),
  ``max_epochs`` is planned as the largest, up to the configured one, whose most exploratory bracket and the refit
  of its longest trial fit in what is left; the brackets start again from there, keeping the trials already run
  where their length fits the new first round, with as many more iterations as keep the search's configured
  work (the budget ends it). The plan is part of the oracle's state: a resume keeps it.
"""

from __future__ import annotations

import math

from mnist_exp.runtime.errors import ConfigError
from mnist_exp.runtime.terminal import hms
from mnist_exp.search.budget import SAFETY


def num_brackets(max_epochs: int, factor: int) -> int:
    """Keras Tuner 1.4.8's ``HyperbandOracle._get_num_brackets``."""
    epochs, brackets = max_epochs, 0
    while epochs >= 1:
        epochs, brackets = epochs / factor, brackets + 1
    return brackets


def bracket(max_epochs: int, factor: int, b: int) -> list[tuple[int, int]]:
    """(trials, epochs each trains) of each round of Hyperband's bracket ``b``, by Keras Tuner 1.4.8's
    ``_get_size`` and ``_get_epochs`` (a round's trials continue the last round's best)."""
    end_size = math.ceil(1 + math.log(max_epochs, factor)) / (b + 1)
    rounds, before = [], 0
    for r in range(b + 1):
        epochs = math.ceil(max_epochs / factor ** (b - r))
        rounds.append((math.ceil(end_size * factor ** (b - r)), epochs - before))
        before = epochs
    return rounds


def first_bracket(max_epochs: int, factor: int) -> list[tuple[int, int]]:
    """The rounds of the bracket Hyperband starts with, its most exploratory."""
    return bracket(max_epochs, factor, num_brackets(max_epochs, factor) - 1)


def iteration_epochs(max_epochs: int, factor: int) -> int:
    """Epochs trained by one Hyperband iteration (every bracket once)."""
    return sum(n * e for b in range(num_brackets(max_epochs, factor)) for n, e in bracket(max_epochs, factor, b))


def plan_max_epochs(configured: int, factor: int, seconds_left: float, estimate, refit_seconds, parallel: int) -> int:
    """The largest ``max_epochs`` up to ``configured`` whose first bracket (``parallel`` trials at a time) and
    the refit of a ``max_epochs`` trial fit in ``seconds_left``; 1 if none does. ``estimate(epochs)`` and
    ``refit_seconds(epochs)``: the budget's (``refit_seconds`` returns 0 without a refit)."""
    for max_epochs in range(configured, 0, -1):
        work = sum(n * estimate(e) for n, e in first_bracket(max_epochs, factor)) / max(1, parallel)
        if work + refit_seconds(max_epochs) <= seconds_left:
            return max_epochs
    return 1


def smallest_budget(cost, epochs: int, refit: bool, refit_scale: float) -> float:
    """Seconds one trial of ``epochs`` epochs and its refit need at the least, by ``cost`` (a TrialCost)."""
    return SAFETY * (cost.seconds(epochs) + (cost.seconds(epochs, refit_scale) if refit else 0.0))


def check_start(where: str, seconds: float, cost, epochs: int, refit: bool, refit_scale: float) -> None:
    """Raise ConfigError if ``seconds`` cannot hold one trial of ``epochs`` epochs (and its refit)."""
    need = smallest_budget(cost, epochs, refit, refit_scale)
    if seconds < need:
        what = f"one {epochs}-epoch trial{' and its refit' if refit else ''}"
        raise ConfigError(f"{where}: tuner.budget: {hms(seconds)} cannot hold {what} on this machine; the smallest "
                          f"budget that can: {math.ceil(need / 60)}m")


class HyperbandPlanMixin:
    """Before Keras Tuner's HyperbandOracle (with ``oracle.SweepOracleMixin``): ``max_epochs`` planned for the
    budget once the first trial has ended. ``parallel``: trials run at once."""

    def __init__(self, *args, parallel: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.parallel = parallel
        self.configured_max_epochs = self.max_epochs
        self.planned = False

    def get_state(self):
        return {**super().get_state(), "planned": self.planned}

    def set_state(self, state):
        super().set_state(state)
        self.planned = bool(state.get("planned", True))  # a sweep from before planning keeps its brackets

    def populate_space(self, trial_id):
        if not self.planned and self.budget is not None and self.budget.estimate(1) is not None:
            self._plan()
        return super().populate_space(trial_id)

    def _plan(self) -> None:
        b = self.budget
        max_epochs = plan_max_epochs(self.configured_max_epochs, self.factor, b.left(), b.estimate,
                                     lambda e: b.refit_seconds(e) if b.refit else 0.0, self.parallel)
        self.planned = True
        print(f"budget {hms(b.seconds)}: Hyperband planned for max_epochs {max_epochs} "
              f"({self.configured_max_epochs} configured): its first bracket{' and a refit' if b.refit else ''} fit in the "
              f"{hms(max(0.0, b.left()))} left", flush=True)
        if max_epochs == self.max_epochs:
            return
        started = [t["id"] for br in self._brackets for t in br["rounds"][0]]
        work = iteration_epochs(self.max_epochs, self.factor) / iteration_epochs(max_epochs, self.factor)
        if math.isfinite(self.hyperband_iterations):
            self.hyperband_iterations = math.ceil(self.hyperband_iterations * work)
        self.max_epochs = max_epochs
        self._current_bracket = num_brackets(max_epochs, self.factor) - 1
        self._brackets = []
        self._start_new_bracket()
        first_round, size = self._brackets[0]["rounds"][0], self._get_size(self._current_bracket, 0)
        epochs = self._get_epochs(self._current_bracket, 0)
        for trial_id in started:  # trials already run keep counting where their length is the first round's
            values = self.trials[trial_id].hyperparameters.values
            if len(first_round) < size and values.get("tuner/epochs") == epochs:
                first_round.append({"past_id": None, "id": trial_id})
