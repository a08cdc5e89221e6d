"""``tuner.kind: bayesian`` (mnist_exp/search/bayesian_oracle.py): Keras Tuner's Gaussian-process oracle learns from a
warm start's observations (earlier trials on the same digits): its random start is shorter and its first modelled
proposals are near what scored best, driven as a tuner would (no training)."""

import functools

from helpers import write_yaml
from helpers.oracles import SMALL, first_proposals, observations, tpe_oracle

bayesian_oracle = functools.partial(tpe_oracle, kind="bayesian")


def test_observations_shorten_the_random_start_and_guide_the_first_proposals(tmp_path):
    from mnist_exp.search.warm_start import WarmStart

    space = write_yaml(tmp_path / "small.yaml", SMALL)
    assert bayesian_oracle(tmp_path / "a", space=space).oracle.num_initial_points is None  # Keras Tuner's 3 x dims
    assert bayesian_oracle(tmp_path / "b", space=space,
                           warm_start=WarmStart([], observations())).oracle.num_initial_points == 1
    cold = first_proposals(bayesian_oracle, tmp_path / "cold", [])
    warm = first_proposals(bayesian_oracle, tmp_path / "warm", observations())
    assert warm[len(warm) // 2] > cold[len(cold) // 2] + 0.1, (cold, warm)
