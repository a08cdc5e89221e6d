"""Pruners: whether a running trial is clearly behind, judged from every trial's per-epoch objective.

A decision is a pure function of the histories the oracle already keeps (Keras Tuner's per-trial metrics,
saved in each trial's file and served to workers over its gRPC protocol), so it needs no state of its own:
a resumed sweep, or a chief on another machine, decides as the first one would have.

Histories are ``{epoch index (0-based): objective}``. A trial's value at an epoch is its best so far (a
noisy epoch after a good one does not condemn it).

- ``median``: after ``warmup_epochs``, stop a trial whose best so far is worse than the median of the other
  trials' best at the same epoch, once ``min_trials`` others have reached it (Optuna's MedianPruner, with
  running trials counted too: workers report asynchronously).
- ``asha``: asynchronous successive halving. Rungs at ``warmup_epochs * reduction_factor**k`` epochs; a trial
  reaching a rung continues only if it is in the top ``1/reduction_factor`` of every value recorded at that
  rung so far (itself included; the first arrivals pass while fewer than ``reduction_factor`` are there), as
  Optuna's SuccessiveHalvingPruner decides; no decision while fewer than ``min_trials`` others reached it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mnist_exp.spec.experiment import PRUNER_KINDS


@dataclass(frozen=True)
class Pruner:
    kind: str  # one of spec.experiment.PRUNER_KINDS
    direction: str  # the objective's: "max" or "min"
    warmup_epochs: int = 1
    min_trials: int = 3
    reduction_factor: int = 3

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "max" else a < b

    def next_decision(self, epochs_done: int, last: int) -> int:
        """After how many epochs (1-based) the pruner next decides about a trial that has run ``epochs_done``
        of its ``last``: the next rung (asha) or epoch past the warm-up (median), at most ``last``."""
        if self.kind == "none":
            return last
        at = max(self.warmup_epochs, epochs_done + 1)
        if self.kind == "asha":
            at = self.warmup_epochs
            while at <= epochs_done:
                at *= self.reduction_factor
        return min(at, last)


def best_so_far(history: dict[int, float], epoch: int, direction: str) -> float | None:
    """The best finite value at epochs 0..``epoch``, or None if the trial has not reached ``epoch``."""
    if epoch not in history:
        return None
    values = [v for e, v in history.items() if e <= epoch and math.isfinite(v)]
    if not values:
        return math.nan
    return max(values) if direction == "max" else min(values)


def should_prune(p: Pruner, own: dict[int, float], others: list[dict[int, float]], epoch: int) -> bool:
    """Whether the trial with history ``own`` stops after ``epoch`` (0-based), given the other trials'."""
    if p.kind == "none" or epoch + 1 < p.warmup_epochs:
        return False
    mine = best_so_far(own, epoch, p.direction)
    if mine is None:
        return False
    if math.isnan(mine):  # nothing finite so far: nothing to wait for
        return True
    theirs = [v for v in (best_so_far(h, epoch, p.direction) for h in others) if v is not None and not math.isnan(v)]
    if len(theirs) < p.min_trials:
        return False
    if p.kind == "median":
        return p.better(_median(theirs), mine)
    if p.kind == "asha":
        return _is_rung(p, epoch + 1) and not _promotable(p, mine, theirs)
    raise ValueError(f"unknown pruner {p.kind!r} (one of {', '.join(PRUNER_KINDS)})")


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _is_rung(p: Pruner, epochs_done: int) -> bool:
    rung = p.warmup_epochs
    while rung < epochs_done:
        rung *= p.reduction_factor
    return rung == epochs_done


def _promotable(p: Pruner, mine: float, theirs: list[float]) -> bool:
    """In the top 1/reduction_factor of the rung's values (the best passes while there are too few)."""
    ranked = sorted([mine, *theirs], reverse=p.direction == "max")
    keep = max(len(ranked) // p.reduction_factor, 1)
    return not p.better(ranked[keep - 1], mine)
