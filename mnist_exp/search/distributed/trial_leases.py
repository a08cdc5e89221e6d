"""A chief's oracle, holding each worker's trial on a lease.

The chief (``oracle_chief.py``) calls these from its gRPC threads, each under Keras Tuner's per-oracle lock,
so a check of who holds a trial and what follows from it cannot interleave with another worker's call.
"""

from __future__ import annotations

import keras_tuner as kt

from mnist_exp.search.oracle_lock import synchronized


class TrialLeaseOracleMixin:
    """Before ``oracle.SweepOracleMixin``: a worker's reports count only while it holds the trial."""

    @synchronized
    def holds(self, tuner_id: str, trial_id: str) -> bool:
        trial = self.ongoing_trials.get(tuner_id)
        return trial is not None and trial.trial_id == trial_id

    @synchronized
    def revoke(self, tuner_id: str):
        """A silent worker's lease is over: its trial goes to the retry queue (the next worker to ask runs
        it) and it no longer counts as a tuner the search waits for. Returns the trial, or None."""
        self.tuner_ids.discard(tuner_id)
        trial = self.ongoing_trials.pop(tuner_id, None)
        if trial is not None:
            if self.budget is not None:
                self.budget.trial_lost(trial.trial_id)
            self._retry_queue.append(trial.trial_id)
            self.save()
        return trial

    @synchronized
    def create_trial_for(self, tuner_id: str):
        """create_trial, but a worker is told to wait (IDLE) instead of to stop while other workers still
        hold trials: one of them may go silent and its trial come back to the queue."""
        trial = self.create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.STOPPED and self.ongoing_trials:
            self.tuner_ids.add(tuner_id)
            return kt.engine.trial.Trial(self.hyperparameters.copy(), status=kt.engine.trial.TrialStatus.IDLE)
        return trial

    @synchronized
    def update_trial_from(self, tuner_id: str, trial_id: str, metrics, step=0):
        if not self.holds(tuner_id, trial_id):
            return None
        return self.update_trial(trial_id, metrics, step=step)

    @synchronized
    def end_trial_from(self, tuner_id: str, trial) -> bool:
        if not self.holds(tuner_id, trial.trial_id):
            return False
        self.end_trial(trial)
        return True
