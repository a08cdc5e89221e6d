"""Warm start (mnist_exp/search/warm_start.py): a new sweep begins with an earlier sweep's best configuration,
chosen once and kept in its state; a sweep the store does not have, or a tuner that cannot start from given
configurations, is one line and exit 2."""

import json

import pytest

from mnist_exp.cli import main

from helpers import ROOT, cli, runs, write_yaml

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
    assert state["warm_start"] == [{k: json.loads(best.data.params[k]) if k != "activation" else best.data.params[k]
                                    for k in searched}]


@pytest.mark.parametrize("setting, message", [
    ("tuner.warm_start=nosuch", "tuner.warm_start: no sweep named nosuch in "),
    ("tuner.kind=hyperband", "tuner.warm_start: starts random, bayesian and tpe searches only (tuner.kind is hyperband)"),
])
def test_a_warm_start_that_cannot_be_is_one_line_and_writes_no_run(swept_store, setting, message):
    before = len(runs())
    proc = cli("sweep", write_yaml(swept_store / "warm.yaml", WARM), "--set", setting, check=2)
    [line] = proc.stderr.strip().splitlines()
    assert message in line, line
    assert len(runs()) == before
