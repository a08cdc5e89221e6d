"""How a trial's end is reported to Keras Tuner (mnist_exp/search/tracked_tuner.py): an attempt given to another
worker is one line and the trial INVALID, as Keras Tuner would report it, never a traceback; any other error keeps
Keras Tuner's own handling. Whole sweeps through the tuner are in test_sweep.py and the distributed tests."""

from __future__ import annotations

from types import SimpleNamespace

import keras_tuner as kt
import pytest

from mnist_exp.search.tracked_tuner import TrackedTunerMixin
from mnist_exp.search.trial_failures import Superseded


class Attempt:
    """What ``_try_run_and_update_trial`` needs of its tuner: the sweep's name, the worker, and a trial that raises."""

    def __init__(self, error: BaseException | None):
        self.sweep = SimpleNamespace(exp=SimpleNamespace(name="mh"), worker="w2")
        self.error = error

    def _run_and_update_trial(self, trial, *args, **kwargs):
        if self.error is not None:
            raise self.error


def ended(error, capsys):
    trial = kt.engine.trial.Trial(kt.HyperParameters(), trial_id="00")
    TrackedTunerMixin._try_run_and_update_trial(Attempt(error), trial)
    return trial, capsys.readouterr()


def test_a_trial_given_to_another_worker_is_one_line_and_invalid(capsys):
    trial, said = ended(Superseded("trial 00: the lease expired and the trial was given to another worker"), capsys)
    assert trial.status == kt.engine.trial.TrialStatus.INVALID
    assert said.out == "[sweep mh w2] trial 00: the lease expired and the trial was given to another worker\n"
    assert "Traceback" not in said.out + said.err


def test_other_errors_keep_keras_tuners_handling(capsys):
    trial, said = ended(kt.errors.FailedTrialError("diverged"), capsys)
    assert trial.status == kt.engine.trial.TrialStatus.FAILED and "FailedTrialError: diverged" in trial.message
    trial, said = ended(RuntimeError("boom"), capsys)
    assert trial.status == kt.engine.trial.TrialStatus.INVALID and "RuntimeError: boom" in trial.message
    assert ("Traceback" in said.err) == kt.src.config.DEBUG  # printed as Keras Tuner prints it
    trial, _ = ended(None, capsys)
    assert trial.status == kt.engine.trial.TrialStatus.COMPLETED
    with pytest.raises(kt.errors.FatalError):
        ended(kt.errors.FatalError("stop"), capsys)
