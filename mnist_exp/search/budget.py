"""A sweep's wall-clock budget (``tuner.budget`` / ``--budget``): no trial starts that would not finish.

The oracle asks ``Budget.admits`` before it hands out a trial (so the chief decides for every
worker, wherever it runs). A trial's length is estimated from the trials this budget has seen
end, as seconds = fixed + per_epoch x epochs: the fixed cost from a least-squares fit once trials of two
different lengths in epochs were seen (else none), the per-epoch cost the slowest trial's once the fixed
cost is taken off, so a configuration slower per epoch than the fit's average is not underestimated when
stretched to long trials. A resumed sweep passes its finished trials' lengths as ``history``, used until a trial of this
invocation ends (they may have run on another machine); with neither, nothing is known and the first trials
start. With ``refit``, each admission keeps room for the refit after the search (it trains ``refit_scale`` times
as many digits as a trial) of whichever trial may end best: as long as the longest of the best trial so far, the
running trials and the candidate, so the reserve grows with the search instead of assuming its longest trial.
"""

from __future__ import annotations

import time

from mnist_exp.runtime.terminal import hms

SAFETY = 1.1  # an estimate is raised by this much: trials vary, the budget is a promise


class Budget:
    def __init__(self, seconds: float, refit: bool = False, refit_scale: float = 1.0, clock=time.monotonic,
                 history=()):
        self.seconds, self.clock = seconds, clock
        self.refit, self.refit_scale = refit, refit_scale
        self.started_at = clock()
        self.running: dict[str, tuple[float, int, int]] = {}  # trial id -> (start, epochs, refit epochs)
        self.ended: list[tuple[int, float]] = []  # (epochs, seconds) of this invocation's trials
        self.history: list[tuple[int, float]] = list(history)  # the same, from before a resume
        self.refused: str | None = None  # why the last trial was not started (None once one starts again)
        self.refused_trial: tuple[str, int, int] | None = None  # (trial id, epochs, refit epochs) of it

    def left(self) -> float:
        return self.seconds - (self.clock() - self.started_at)

    def estimate(self, epochs: int) -> float | None:
        """Seconds a trial of ``epochs`` epochs should take, or None before any trial has ended."""
        seen = self.ended or self.history
        if not seen:
            return None
        fixed = 0.0
        if len({e for e, _ in seen}) >= 2:
            n = len(seen)
            mx = sum(e for e, _ in seen) / n
            my = sum(s for _, s in seen) / n
            slope = sum((e - mx) * (s - my) for e, s in seen) / sum((e - mx) ** 2 for e, _ in seen)
            if slope > 0:
                fixed = min(max(0.0, my - slope * mx), min(s for _, s in seen))
        per_epoch = max((s - fixed) / max(e, 1) for e, s in seen)
        return SAFETY * (fixed + per_epoch * epochs)

    def refit_seconds(self, epochs: int) -> float | None:
        """The refit's estimate for a trial of ``epochs`` epochs (more digits than a trial), or None."""
        need = self.estimate(epochs)
        return None if need is None else need * self.refit_scale

    def _need(self, epochs: int, refit_epochs: int) -> tuple[float | None, float]:
        """(the trial's estimate, the refit's share kept beside it)."""
        need = self.estimate(epochs)
        if not self.refit or need is None:
            return need, 0.0
        return need, self.refit_seconds(max([refit_epochs, *(r for _, _, r in self.running.values())]))

    def fits(self, epochs: int, refit_epochs: int = 0) -> bool:
        """Whether a trial of ``epochs`` would be admitted now (nothing recorded). ``refit_epochs``: the longest
        refit it could leave to run, that is of itself or of the best trial so far (a Hyperband trial continuing
        another for ``epochs`` would be refitted from scratch)."""
        need, reserve = self._need(epochs, max(epochs, refit_epochs))
        return self.left() > 0 and (need is None or need + reserve <= self.left())

    def admits(self, trial_id: str, epochs: int, refit_epochs: int = 0) -> bool:
        """True (and the trial counted as running) if it should finish within the budget, leaving the
        refit's share; False, with ``refused`` saying why, if not."""
        refit_epochs = max(epochs, refit_epochs)
        if not self.fits(epochs, refit_epochs):
            need, reserve = self._need(epochs, refit_epochs)
            what = f"needs ~{hms(need)}" if need is not None else "cannot start"
            kept = f" (+ ~{hms(reserve)} kept for the refit)" if reserve else ""
            self.refused = (f"budget {hms(self.seconds)}: trial {trial_id} {what}{kept}, {hms(max(self.left(), 0))} "
                            "left: not started")
            self.refused_trial = (trial_id, epochs, refit_epochs)
            return False
        self.refused = self.refused_trial = None
        self.running[trial_id] = (self.clock(), epochs, refit_epochs)
        return True

    def trial_ended(self, trial_id: str, epochs_run: int | None = None) -> None:
        """A trial ended; ``epochs_run``: fewer epochs than admitted (a pruned trial), for the estimate."""
        if trial_id in self.running:
            start, epochs, _ = self.running.pop(trial_id)
            self.ended.append((epochs_run or epochs, self.clock() - start))

    def trial_lost(self, trial_id: str) -> None:
        """A trial taken back from a silent worker: its time says nothing about trial length."""
        self.running.pop(trial_id, None)
