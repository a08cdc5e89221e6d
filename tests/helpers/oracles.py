"""Driving a real oracle as a tuner would, without training: ask for trials, report a score, end them."""

from __future__ import annotations

import math

from helpers.commands import ROOT, write_yaml


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


POWER = ROOT / "search_spaces" / "power.yaml"  # every lever: the reproducibility tests
SMALL = """hyperparameters:
  learning_rate: {type: float, min: 1.0e-4, max: 3.0e-2, sampling: log, default: 1.0e-3}
  dropout_1: {type: float, min: 0.0, max: 0.6, step: 0.1, default: 0.5}
  activation: {type: choice, values: [relu, elu, gelu, swish], default: relu}
"""  # three levers: enough trials for TPE to model in a test


def tpe_oracle(folder, *overrides, space=POWER, kind="tpe", warm_start=None):
    """The Tuner (and its oracle) of quick.yaml as a ``kind`` sweep over ``space``, in ``folder``."""
    from mnist_exp.model.data import load_data
    from mnist_exp.search import tracked_tuner
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    exp = load_experiment(ROOT / "experiments" / "quick.yaml",
                          ["data.source=embedded", "data.train_size=200", "data.test_size=100", f"tuner.kind={kind}",
                           "tuner.max_trials=30", f"search_space={space}", *overrides])
    sw = tracked_tuner.SweepContext(exp, load_data(exp.data, exp.seed), "0", "parent")
    return tracked_tuner.make_tuner(sw, load_space(exp.search_space).to_hyperparameters(fixed=exp.hp), folder,
                                    warm_start=warm_start)


def score(values: dict) -> float:
    """Best at learning_rate 3e-3, whatever else: a known answer for the sampler to find."""
    return 1.0 - abs(math.log10(values["learning_rate"]) - math.log10(3e-3))


def observations(n: int = 20) -> list[dict]:
    """Earlier trials over SMALL's learning rates, scored by ``score``: what a warm start on the same digits brings."""
    rates = [10 ** (-4 + i * (math.log10(3e-2) + 4) / (n - 1)) for i in range(n)]
    return [{"values": {"learning_rate": lr, "dropout_1": 0.3, "activation": "relu"},
             "score": score({"learning_rate": lr})} for lr in rates]


def first_proposals(oracle_factory, folder, observed: list, n: int = 6) -> list[float]:
    from mnist_exp.search.warm_start import WarmStart

    tuner = oracle_factory(folder, space=write_yaml(folder.parent / f"{folder.name}.yaml", SMALL),
                           warm_start=WarmStart([], observed))
    return sorted(score(v) for v in drive(tuner.oracle, n, score))

