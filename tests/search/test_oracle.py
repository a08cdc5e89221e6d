"""The oracle as mnist-exp builds it (mnist_exp/search/oracle.py): the same seed proposes the same trials. The real
Keras Tuner oracle of experiments/best.yaml (as Hyperband over 27 epochs, and as itself: random) is driven trial by
trial (scores reported as a worker would), no training: what is checked is which configurations it hands out, in
which order, with which Hyperband epochs."""

import pytest

from helpers import ROOT
from helpers.oracles import drive

BEST = ROOT / "experiments" / "best.yaml"


def proposals(tmp_path, overrides, n):
    from mnist_exp.search import tracked_tuner
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.model.data import load_data
    from mnist_exp.spec.space import load_space

    exp = load_experiment(BEST, ["data.source=embedded", "data.train_size=200", "data.test_size=100", *overrides])
    space = load_space(exp.search_space)
    sw = tracked_tuner.SweepContext(exp, load_data(exp.data, exp.seed), "0", "parent")
    oracle = tracked_tuner.make_tuner(sw, space.to_hyperparameters(fixed=exp.hp), tmp_path).oracle
    # a score that depends only on the configuration, so promotions between rungs are reproducible too
    return drive(oracle, n, lambda v: (v["learning_rate"] * 1e4 + v["label_smoothing"]) % 1, tuner_id="chief")


@pytest.mark.parametrize("kind", ["hyperband", "random"])
def test_the_same_seed_proposes_the_same_trials_and_another_seed_others(tmp_path, kind):
    n = 40  # Hyperband over 27 epochs: 27 one-epoch trials, then the 9 best continued to 3 epochs, ...
    tuner = [f"tuner.kind={kind}", "tuner.max_trials=40"]
    tuner += ["tuner.max_epochs=27", "tuner.factor=3"] if kind == "hyperband" else []
    first = proposals(tmp_path / "a", tuner, n)
    again = proposals(tmp_path / "b", tuner, n)
    other = proposals(tmp_path / "c", [*tuner, "seed=43"], n)
    assert first == again
    assert first != other
    searched = [k for k in first[0] if not k.startswith("tuner/")]
    assert len({tuple(sorted((k, v[k]) for k in searched)) for v in first}) > 10  # the space is really sampled
    if kind == "hyperband":
        assert {v["tuner/epochs"] for v in first} >= {1, 3}  # trials were continued on a longer rung


def test_a_reloaded_grid_goes_on_through_the_combinations_it_has_not_tried(tmp_path):
    """Keras Tuner 1.4.8's grid keeps its order in memory only: reloaded, it ended at once (or failed on a KeyError)."""
    from mnist_exp.search import tracked_tuner
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.model.data import load_data
    from mnist_exp.spec.space import load_space

    exp = load_experiment(ROOT / "experiments" / "quick.yaml", [
        "data.train_size=200", "data.test_size=100", "tuner.kind=grid", "tuner.max_trials=20",
        f"search_space={ROOT / 'search_spaces' / 'small.yaml'}"])
    sw = tracked_tuner.SweepContext(exp, load_data(exp.data, exp.seed), "0", "parent")

    def tuner():
        return tracked_tuner.make_tuner(sw, load_space(exp.search_space).to_hyperparameters(fixed=exp.hp), tmp_path)

    def run(oracle, n):
        return [tuple(sorted(v.items())) for v in drive(oracle, n, lambda v: 0.5, until_stopped=True)]

    first = tuner()
    before = run(first.oracle, 3)
    first.save()
    after = run(tuner().oracle, 20)  # a new process resuming the sweep
    assert len(before) == 3 and len(before + after) == 8 == len(set(before + after))  # small.yaml: 2 x 2 x 2
