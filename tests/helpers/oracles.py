"""Driving a real oracle as a tuner would, without training: ask for trials, report a score, end them."""

from __future__ import annotations


def drive(oracle, n: int, score, tuner_id: str = "tuner0", until_stopped: bool = False, train=None) -> list[dict]:
    """Run ``n`` trials through ``oracle``, each scored ``score(values)`` as its one epoch's val_accuracy; the
    proposed values, in order. ``until_stopped``: end early when the oracle has no trial left (else that fails).
    ``train(values)``: called as the trial would train (a test's clock moves on)."""
    seen = []
    for _ in range(n):
        trial = oracle.create_trial(tuner_id)
        if until_stopped and trial.status != "RUNNING":
            break
        assert trial.status == "RUNNING", trial.status
        values = dict(trial.hyperparameters.values)
        seen.append(values)
        if train is not None:
            train(values)
        oracle.update_trial(trial.trial_id, {"val_accuracy": score(values)}, step=0)
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return seen
