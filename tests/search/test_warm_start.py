"""Warm start (mnist_exp/search/warm_start.py): a new sweep begins with an earlier sweep's best configuration,
chosen once and kept in its state; a sweep the store does not have, or a tuner that cannot start from given
configurations, is one line and exit 2."""

import json

import pytest

from mnist_exp.cli import main

from helpers import ROOT, cli_here, runs, write_yaml

WARM = f"""# mnist-exp sweep warm.yaml
name: warm
search_space: {ROOT / "search_spaces" / "small.yaml"}
seed: 7
data: {{source: embedded, train_size: 600, test_size: 200, validation_split: 0.2}}
training: {{epochs: 1}}
tuner: {{kind: random, max_trials: 1, warm_start: a}}
"""  # the swept store's data (conftest.SWEEP_YAML), one trial: the warm one


@pytest.mark.slow
def test_the_earlier_sweeps_best_configuration_is_trial_0_of_the_new_one(swept_store, capsys):
    [best] = sorted((r for r in runs(filter_string="tags.`mnist_exp.sweep` = 'a' and tags.`mnist_exp.kind` = 'trial'")
                     if r.info.status == "FINISHED"), key=lambda r: -r.data.metrics["objective"])[:1]
    assert main(["sweep", str(write_yaml(swept_store / "warm.yaml", WARM))]) == 0
    assert "sweep warm: warm start from a: 1 configuration(s) first" in capsys.readouterr().out
    [trial] = runs(filter_string="tags.`mnist_exp.sweep` = 'warm' and tags.`mnist_exp.kind` = 'trial'")
    searched = ("learning_rate", "filters_1", "activation")
    assert {k: trial.data.params[k] for k in searched} == {k: best.data.params[k] for k in searched}
    [parent] = runs(filter_string="tags.`mnist_exp.sweep` = 'warm' and tags.`mnist_exp.kind` = 'sweep'")
    assert parent.data.tags["mnist_exp.warm_start"] == "a"
    state = json.loads((swept_store / "mlruns" / "tuner" / "warm" / "mnist_exp_sweep.json").read_text())
    assert state["warm_observations"] == []  # a random sweep learns from nothing
    assert state["warm_start"] == [{k: json.loads(best.data.params[k]) if k != "activation" else best.data.params[k]
                                    for k in searched}]


@pytest.mark.slow
def test_model_based_sweeps_learn_from_the_earlier_trials_on_the_same_digits_only(swept_store, capsys):
    """warm_start.choose on the swept store: a TPE sweep on the same digits takes every finished, unpruned trial of
    sweep a as an observation; on other digits, or as a random sweep, none (and the line says why)."""
    import os

    from mnist_exp.model.data import load_data
    from mnist_exp.search import warm_start
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    usable = [r for r in runs(filter_string="tags.`mnist_exp.sweep` = 'a' and tags.`mnist_exp.kind` = 'trial'")
              if r.info.status == "FINISHED" and "mnist_exp.pruned" not in r.data.tags]
    uri = os.environ["MLFLOW_TRACKING_URI"]
    exp = load_experiment(write_yaml(swept_store / "warm.yaml", WARM), ["tuner.kind=tpe", "seed=1"])  # a's split
    space, ds = load_space(exp.search_space), load_data(exp.data, exp.seed)
    same = warm_start.choose(exp, space, uri, (ds.fingerprint, ds.test_fingerprint))
    assert len(usable) >= 2 and len(same.configs) == 1
    assert sorted(o["score"] for o in same.observations) == sorted(r.data.metrics["objective"] for r in usable)
    assert f"1 configuration(s) first, {len(usable)} earlier trial(s) as observations\n" in capsys.readouterr().out
    other = warm_start.choose(exp, space, uri, ("other digits", ds.test_fingerprint))
    assert other.observations == [] and len(other.configs) == 1
    assert ("0 earlier trial(s) as observations; not used as observations: a (other training or test digits)"
            in capsys.readouterr().out)
    random = load_experiment(write_yaml(swept_store / "warm.yaml", WARM))
    assert warm_start.choose(random, space, uri, (ds.fingerprint, ds.test_fingerprint)).observations == []
    assert warm_start.WarmStart.from_state(same.to_state()) == same  # kept in the state file as chosen


@pytest.mark.parametrize("setting, message", [
    ("tuner.warm_start=nosuch", "tuner.warm_start: no sweep named nosuch in "),
    ("tuner.kind=hyperband", "tuner.warm_start: starts random, bayesian and tpe searches only (tuner.kind is hyperband)"),
])
def test_a_warm_start_that_cannot_be_is_one_line_and_writes_no_run(swept_store, setting, message):
    before = len(runs())
    proc = cli_here("sweep", write_yaml(swept_store / "warm.yaml", WARM), "--set", setting, check=2)
    [line] = proc.stderr.strip().splitlines()
    assert message in line, line
    assert len(runs()) == before
