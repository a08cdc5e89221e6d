"""``tuner.kind: tpe`` (mnist_exp/search/tpe_oracle.py): the real oracle as mnist-exp builds it, driven trial by trial
as a tuner would (no training): the same seed proposes the same trials, the proposals move towards what scored
well, and an oracle reloaded from its files (a resumed sweep) proposes what the first one would have."""

import math

from helpers import ROOT, oracles, write_yaml

POWER = ROOT / "search_spaces" / "power.yaml"  # every lever: the reproducibility tests
SMALL = """hyperparameters:
  learning_rate: {type: float, min: 1.0e-4, max: 3.0e-2, sampling: log, default: 1.0e-3}
  dropout_1: {type: float, min: 0.0, max: 0.6, step: 0.1, default: 0.5}
  activation: {type: choice, values: [relu, elu, gelu, swish], default: relu}
"""  # three levers: enough trials for TPE to model in a test


def tpe_oracle(folder, *overrides, space=POWER):
    from mnist_exp.model.data import load_data
    from mnist_exp.search import tracked_tuner
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    exp = load_experiment(ROOT / "experiments" / "quick.yaml",
                          ["data.source=embedded", "data.train_size=200", "data.test_size=100", "tuner.kind=tpe",
                           "tuner.max_trials=30", f"search_space={space}", *overrides])
    sw = tracked_tuner.SweepContext(exp, load_data(exp.data, exp.seed), "0", "parent")
    return tracked_tuner.make_tuner(sw, load_space(exp.search_space).to_hyperparameters(fixed=exp.hp), folder)


def score(values: dict) -> float:
    """Best at learning_rate 3e-3, whatever else: a known answer for the sampler to find."""
    return 1.0 - abs(math.log10(values["learning_rate"]) - math.log10(3e-3))


def drive(oracle, n: int) -> list[dict]:
    return oracles.drive(oracle, n, score)


def test_the_same_seed_proposes_the_same_trials_and_another_seed_others(tmp_path):
    first = drive(tpe_oracle(tmp_path / "a").oracle, 14)
    again = drive(tpe_oracle(tmp_path / "b").oracle, 14)
    other = drive(tpe_oracle(tmp_path / "c", "seed=43").oracle, 14)
    assert first == again and first != other
    assert len({v["learning_rate"] for v in first}) == 14  # sampled, not repeated


def test_after_its_random_start_tpe_proposes_near_what_scored_best(tmp_path):
    from mnist_exp.search.tpe_oracle import startup_trials

    seen = drive(tpe_oracle(tmp_path, space=write_yaml(tmp_path / "small.yaml", SMALL)).oracle, 30)
    k = startup_trials(30)
    start = sorted(score(v) for v in seen[:k])
    modelled = sorted(score(v) for v in seen[k:])
    median = lambda xs: xs[len(xs) // 2]  # noqa: E731
    assert median(modelled) > median(start) + 0.1, (start, modelled)


def test_a_reloaded_oracle_proposes_what_the_first_one_would_have(tmp_path):
    tuner = tpe_oracle(tmp_path / "one")
    drive(tuner.oracle, 12)
    tuner.save()
    continuing = drive(tuner.oracle, 3)

    reference = tpe_oracle(tmp_path / "two")
    drive(reference.oracle, 12)
    reference.save()
    resumed = tpe_oracle(tmp_path / "two")  # a new process: the tuner reloads the oracle from its files
    assert len(resumed.oracle.trials) == 12
    assert drive(resumed.oracle, 3) == continuing
