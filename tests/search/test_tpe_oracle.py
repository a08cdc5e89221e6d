"""``tuner.kind: tpe`` (mnist_exp/search/tpe_oracle.py): the real oracle as mnist-exp builds it, driven trial by trial
as a tuner would (no training): the same seed proposes the same trials, the proposals move towards what scored
well, and an oracle reloaded from its files (a resumed sweep) proposes what the first one would have."""


from helpers import oracles, write_yaml
from helpers.oracles import SMALL, first_proposals, observations, score, tpe_oracle

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


def test_observations_from_earlier_sweeps_make_the_first_proposals_model_based(tmp_path):
    cold = first_proposals(tpe_oracle, tmp_path / "cold", [])
    warm = first_proposals(tpe_oracle, tmp_path / "warm", observations())
    assert warm[len(warm) // 2] > cold[len(cold) // 2] + 0.1, (cold, warm)
