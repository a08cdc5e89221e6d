"""A budgeted sweep planned for its budget (mnist_exp/search/budget_plan.py): Hyperband's bracket arithmetic
against Keras Tuner's own, the plan of a real Hyperband oracle driven on an injected clock, the refusal of a
budget that cannot hold one trial, and a real short-budget sweep of 1- to 9-epoch trials with a refit."""

import re

import pytest

from mnist_exp.search.budget import Budget
from mnist_exp.search.budget_plan import (bracket, check_start, first_bracket, iteration_epochs, num_brackets,
                                          plan_max_epochs)

from helpers import ROOT, cli_here, runs
from helpers.oracles import drive

BEST = ROOT / "experiments" / "best.yaml"
QUICK = ROOT / "experiments" / "quick.yaml"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_brackets_are_keras_tuners_own():
    import keras_tuner as kt

    for max_epochs in range(1, 40):
        for factor in (2, 3, 4):
            oracle = kt.oracles.HyperbandOracle(kt.Objective("val_accuracy", "max"), max_epochs=max_epochs,
                                                factor=factor)
            assert num_brackets(max_epochs, factor) == oracle._get_num_brackets()
            for b in range(oracle._get_num_brackets()):
                ends = [oracle._get_epochs(b, r) for r in range(b + 1)]
                expected = [(oracle._get_size(b, r), e - (ends[r - 1] if r else 0)) for r, e in enumerate(ends)]
                assert bracket(max_epochs, factor, b) == expected, (max_epochs, factor, b)
    assert first_bracket(27, 3) == [(27, 1), (9, 2), (3, 6), (1, 18)]
    assert iteration_epochs(27, 3) == (27 + 18 + 18 + 18) + (36 + 24 + 36) + (54 + 36) + 108  # 375


def test_the_plan_is_the_longest_max_epochs_whose_first_bracket_and_refit_fit():
    def estimate(epochs):
        return 10.0 * epochs

    # max_epochs 9: 9 x 10 + 3 x 20 + 1 x 60 = 210 s of trials, + 90 s for the refit = 300 s
    assert plan_max_epochs(27, 3, 300.0, estimate, estimate, parallel=1) == 9
    assert plan_max_epochs(27, 3, 299.0, estimate, estimate, parallel=1) < 9
    assert plan_max_epochs(27, 3, 210.0, estimate, lambda e: 0.0, parallel=1) == 9  # no refit
    assert plan_max_epochs(27, 3, 105.0 + 90.0, estimate, estimate, parallel=2) == 9  # two trials at a time
    assert plan_max_epochs(9, 3, 1e9, estimate, estimate, parallel=1) == 9  # never above the configured one
    assert plan_max_epochs(27, 3, 1.0, estimate, estimate, parallel=1) == 1  # nothing fits: the shortest


def test_a_budget_that_cannot_hold_one_trial_and_its_refit_names_the_smallest_that_can():
    from mnist_exp.model.timing import TrialCost
    from mnist_exp.runtime.errors import ConfigError

    cost = TrialCost(fixed_s=5.0, epoch_s=50.0)  # a 2-epoch trial: 105 s; its refit on 1.5x the digits: 155 s
    check_start("e.yaml", 300.0, cost, 2, refit=True, refit_scale=1.5)
    check_start("e.yaml", 120.0, cost, 2, refit=False, refit_scale=1.5)
    with pytest.raises(ConfigError) as e:
        check_start("e.yaml", 240.0, cost, 2, refit=True, refit_scale=1.5)
    assert str(e.value) == ("e.yaml: tuner.budget: 0:04:00 cannot hold one 2-epoch trial and its refit on this "
                            "machine; the smallest budget that can: 5m")  # 1.1 x 260 s = 286 s


def hyperband_oracle(tmp_path, budget, max_epochs=27):
    from mnist_exp.model.data import load_data
    from mnist_exp.search import tracked_tuner
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    exp = load_experiment(BEST, ["data.source=embedded", "data.train_size=200", "data.test_size=100",
                                 "tuner.kind=hyperband", f"tuner.max_epochs={max_epochs}", "tuner.factor=3",
                                 "tuner.refit=true"])
    sw = tracked_tuner.SweepContext(exp, load_data(exp.data, exp.seed), "0", "parent")
    space = load_space(exp.search_space).to_hyperparameters(fixed=exp.hp)
    return tracked_tuner.make_tuner(sw, space, tmp_path, budget=budget).oracle


def test_hyperband_under_a_short_budget_reaches_the_longest_rung_of_its_plan(tmp_path):
    """10 minutes, 2 s + 10 s per epoch: Keras Tuner's plan for 27 epochs would spend them on its first round of
    27 one-epoch trials. Planned after the first trial, the search reaches its longest rung and keeps its refit."""
    clock = Clock()
    budget = Budget(600, refit=True, clock=clock)
    oracle = hyperband_oracle(tmp_path, budget)

    def train(values):
        clock.now += 2 + 10 * (values["tuner/epochs"] - values["tuner/initial_epoch"])

    seen = drive(oracle, 200, lambda v: (v["learning_rate"] * 1e4) % 1, until_stopped=True, train=train)
    planned = oracle.max_epochs
    assert 3 <= planned < 27
    assert max(v["tuner/epochs"] for v in seen) == planned  # the plan's longest rung was reached
    assert seen[0]["tuner/epochs"] == 1  # the first trial, run before the plan, kept its place in the first round
    assert sum(1 for v in seen if v["tuner/epochs"] == 1) == first_bracket(planned, 3)[0][0]
    assert oracle.hyperband_iterations == -(-iteration_epochs(27, 3) // iteration_epochs(planned, 3))  # the same work
    assert budget.refused and clock.now <= 600 - budget.refit_seconds(planned) / 1.1  # room left for the refit

    reloaded = hyperband_oracle(tmp_path, Budget(600, refit=True, clock=Clock()))  # a resume keeps the plan
    reloaded.reload()
    assert reloaded.max_epochs == planned and reloaded.planned


@pytest.mark.slow
def test_a_short_budget_runs_a_real_search_of_1_to_9_epoch_trials_and_its_refit(store):
    """The issue's case, small: Hyperband up to 9 epochs and a refit in a short budget. Too short a budget
    stops at the start (exit 2, nothing written); a short one plans its brackets and refits the best."""
    args = [QUICK, "--set", "data.train_size=300", "--set", "data.test_size=100", "--set", "tuner.kind=hyperband",
            "--set", "tuner.max_epochs=9", "--set", "tuner.factor=3", "--set", "tuner.refit=true"]
    proc = cli_here("sweep", *args, "--budget", "1s", check=2)
    [line] = proc.stderr.strip().splitlines()  # one line
    assert re.fullmatch(rf"mnist-exp sweep: error: {re.escape(str(QUICK))}: tuner\.budget: 0:00:01 cannot hold one "
                        r"1-epoch trial and its refit on this machine; the smallest budget that can: \d+m", line), proc.stderr
    assert not runs() and not (store / "tuner").exists()

    proc = cli_here("sweep", *args, "--budget", "50s", check=0)
    m = re.search(r"Hyperband planned for max_epochs (\d+) \(9 configured\)", proc.stdout)
    assert m, proc.stdout[-3000:]
    planned = int(m.group(1))
    trials = runs(filter_string="tags.`mnist_exp.kind` = 'trial'")
    epochs = [int(r.data.params["training.epochs"]) for r in trials]
    assert len(trials) >= 2 and max(epochs) <= planned
    [refit] = runs(filter_string="tags.`mnist_exp.kind` = 'refit'")
    assert refit.info.status == "FINISHED"
