"""How long a trial trains (mnist_exp/fidelity.py): Hyperband's ``tuner/epochs`` wins over training.epochs,
in the schedule's steps, in the logged params and in the sweep's identity; a real tiny Hyperband sweep logs
what each trial ran."""

import dataclasses

import pytest

from mnist_exp.search import sweep_state
from mnist_exp.spec.experiment import load_experiment
from mnist_exp.model.fidelity import decided_by_tuner, logged, trial_epochs, trial_steps
from mnist_exp.spec.space import load_space

from helpers import ROOT

QUICK = ROOT / "experiments" / "quick.yaml"
HYPERBAND = [QUICK, "--tuner", "hyperband", "--set", "tuner.max_epochs=3", "--set", "tuner.factor=3",
             "--set", "data.train_size=200", "--set", "data.test_size=100"]


@pytest.mark.parametrize("values, configured, expected", [
    ({}, 5, (0, 5)),
    ({"learning_rate": 0.01}, 2, (0, 2)),
    ({"tuner/epochs": 3, "tuner/initial_epoch": 1}, 10, (1, 3)),  # Hyperband's count wins
    ({"tuner/epochs": 2}, 10, (0, 2)),
    ({"tuner/epochs": 1, "tuner/initial_epoch": 0}, 10, (0, 1)),
])
def test_trial_epochs_takes_hyperbands_count_over_the_configured_one(values, configured, expected):
    assert trial_epochs(values, configured) == expected


def test_trial_steps_spans_the_epochs_the_trial_trains():
    assert trial_steps({}, 2, 270, 32) == 2 * 9  # ceil(270 / 32) = 9 steps per epoch
    assert trial_steps({"tuner/epochs": 3, "tuner/initial_epoch": 1}, 10, 270, 32) == 2 * 9  # epochs 2 and 3 only
    assert trial_steps({"tuner/epochs": 4}, 1, 256, 16) == 4 * 16
    assert trial_steps({"tuner/epochs": 3, "tuner/initial_epoch": 3}, 10, 270, 32) == 1  # never a 0-step schedule


def test_logged_params_say_the_trials_own_length():
    assert logged({}, 4) == {"training.epochs": 4}
    assert logged({"tuner/epochs": 3, "tuner/initial_epoch": 1}, 10) == {"training.epochs": 3,
                                                                         "training.initial_epoch": 1}
    assert logged({"tuner/epochs": 1, "tuner/initial_epoch": 0}, 10) == {"training.epochs": 1}


def test_only_hyperband_decides_trial_length():
    assert decided_by_tuner("hyperband")
    assert not any(decided_by_tuner(k) for k in ("random", "bayesian", "grid"))


def with_epochs(exp, kind, epochs):
    return dataclasses.replace(exp, tuner=dataclasses.replace(exp.tuner, kind=kind),
                               training=dataclasses.replace(exp.training, epochs=epochs))


def test_identity_leaves_training_epochs_out_only_under_hyperband():
    exp = load_experiment(QUICK)
    space = load_space(exp.search_space)
    hb = sweep_state.identity(with_epochs(exp, "hyperband", 2), space)
    assert sweep_state.identity(with_epochs(exp, "hyperband", 7), space) == hb
    rnd = sweep_state.identity(with_epochs(exp, "random", 2), space)
    assert sweep_state.identity(with_epochs(exp, "random", 7), space) != rnd
    changed = {k for k in rnd if sweep_state.identity(with_epochs(exp, "random", 7), space)[k] != rnd[k]}
    assert changed == {"training"}
    # other training fields still count under Hyperband
    other = dataclasses.replace(exp, tuner=dataclasses.replace(exp.tuner, kind="hyperband"),
                                training=dataclasses.replace(exp.training, early_stopping_patience=3))
    assert sweep_state.identity(other, space) != hb


# A real Hyperband sweep's trials logging their own epochs: tests/search/test_sweep.py (the hyperband case).
