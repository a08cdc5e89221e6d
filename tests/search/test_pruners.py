"""Pruning decisions (mnist_exp/search/pruners.py) against scripted histories, then the real Keras Tuner oracle as
mnist-exp builds it answering STOPPED, keeping the decision in its saved state and starting a re-run trial afresh."""

import json
import math

import pytest

from mnist_exp.search.pruners import Pruner, best_so_far, should_prune

from helpers import ROOT, cli_here, pruned_sweep


def curves(*finals, epochs=9, slope=0.01):
    """Histories rising by ``slope`` per epoch towards each final value."""
    return [{e: f - slope * (epochs - 1 - e) for e in range(epochs)} for f in finals]


def test_best_so_far_is_the_best_reported_epoch_up_to_the_one_asked():
    h = {0: 0.5, 1: 0.9, 2: 0.7}
    assert best_so_far(h, 2, "max") == 0.9 and best_so_far(h, 0, "max") == 0.5
    assert best_so_far(h, 2, "min") == 0.5
    assert best_so_far(h, 3, "max") is None  # not reached yet
    assert math.isnan(best_so_far({0: math.nan}, 0, "max"))


def test_median_prunes_below_the_others_median_after_warm_up_with_enough_others():
    p = Pruner("median", "max", warmup_epochs=2, min_trials=3)
    others = curves(0.90, 0.92, 0.94)
    low, high = {0: 0.5, 1: 0.6}, {0: 0.95, 1: 0.96}
    assert should_prune(p, low, others, epoch=1)
    assert not should_prune(p, high, others, epoch=1)
    assert not should_prune(p, {0: 0.5}, others, epoch=0)  # still warming up (epoch 1 of 2)
    assert not should_prune(p, low, others[:2], epoch=1)  # two others only: no decision
    # others that have not reached the epoch do not count
    assert not should_prune(p, low, [{0: 0.9}, {0: 0.9}, *others[:2]], epoch=1)


def test_median_for_a_loss_prunes_the_higher_values():
    p = Pruner("median", "min", warmup_epochs=1, min_trials=2)
    others = [{0: 0.3}, {0: 0.4}]
    assert should_prune(p, {0: 0.9}, others, 0)
    assert not should_prune(p, {0: 0.2}, others, 0)


def test_a_trial_that_dips_after_a_good_epoch_is_judged_by_its_best():
    p = Pruner("median", "max", warmup_epochs=1, min_trials=2)
    others = [{0: 0.8, 1: 0.8}, {0: 0.8, 1: 0.8}]
    assert not should_prune(p, {0: 0.9, 1: 0.1}, others, 1)


def test_a_trial_with_no_finite_value_is_pruned_at_once_after_warm_up():
    p = Pruner("median", "max", warmup_epochs=1, min_trials=3)
    assert should_prune(p, {0: math.nan}, [], 0)


def test_asha_judges_at_rungs_only_and_keeps_the_top_third():
    p = Pruner("asha", "max", warmup_epochs=1, min_trials=1, reduction_factor=3)
    others = [{e: v for e in range(9)} for v in (0.5, 0.6, 0.7, 0.8, 0.9)]
    # rungs after epochs 1, 3, 9 (0-based epochs 0, 2, 8); between them no decision, however bad
    assert should_prune(p, {0: 0.55}, others, 0)
    assert not should_prune(p, {0: 0.55, 1: 0.55}, others, 1)
    assert should_prune(p, {e: 0.55 for e in range(3)}, others, 2)
    # six values at the rung: the top two continue
    assert not should_prune(p, {0: 0.85}, others, 0)
    assert should_prune(p, {0: 0.75}, others, 0)


def test_asha_lets_the_first_arrivals_through_unless_they_are_worse_than_all():
    p = Pruner("asha", "max", warmup_epochs=1, min_trials=1, reduction_factor=3)
    assert not should_prune(p, {0: 0.9}, [{0: 0.5}], 0)  # two values: the best one continues
    assert should_prune(p, {0: 0.4}, [{0: 0.5}], 0)


def test_none_never_prunes():
    assert not should_prune(Pruner("none", "max"), {0: 0.0}, curves(0.9, 0.9, 0.9, 0.9), 0)


# --- the real oracle ------------------------------------------------------------------------------------------

def oracle_for(tmp_path, *overrides, budget=None):
    from mnist_exp.model.data import load_data
    from mnist_exp.search import tracked_tuner
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    exp = load_experiment(ROOT / "experiments" / "quick.yaml",
                          ["data.source=embedded", "data.train_size=200", "data.test_size=100", "tuner.max_trials=20",
                           *overrides])
    sw = tracked_tuner.SweepContext(exp, load_data(exp.data, exp.seed), "0", "parent")
    space = load_space(exp.search_space)
    return tracked_tuner.make_tuner(sw, space.to_hyperparameters(fixed=exp.hp), tmp_path, budget=budget).oracle


def run_trial(oracle, values, tuner_id="tuner0", epoch_done=None):
    """Report ``values`` epoch by epoch as a tuner does; end the trial where the oracle says STOPPED.
    ``epoch_done()``: called before each report (a test's clock moves on)."""
    trial = oracle.create_trial(tuner_id)
    assert trial.status == "RUNNING"
    for epoch, v in enumerate(values):
        if epoch_done is not None:
            epoch_done()
        answer = oracle.update_trial(trial.trial_id, {"val_accuracy": v}, step=epoch)
        if answer.status == "STOPPED":
            break
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    return oracle.trials[trial.trial_id]


def test_the_oracle_stops_a_trial_behind_the_median_keeps_it_in_its_state_and_ranks_it_last(tmp_path):
    oracle = oracle_for(tmp_path, "tuner.pruner=median", "tuner.pruner_min_trials=2", "training.epochs=4")
    for final in (0.90, 0.80):
        run_trial(oracle, [final - 0.03, final - 0.02, final - 0.01, final])
    slow = run_trial(oracle, [0.95, 0.20, 0.20, 0.20])  # best so far stays ahead: runs its course
    assert slow.trial_id not in oracle.pruned
    pruned = run_trial(oracle, [0.30, 0.31, 0.32, 0.99])
    assert oracle.pruned == {pruned.trial_id: 1}
    assert pruned.status == "COMPLETED" and pruned.score == pytest.approx(0.30)  # its best epoch so far
    assert [t.trial_id for t in oracle.get_best_trials(4)][-1] == pruned.trial_id
    state = json.loads((tmp_path / "quick" / "oracle.json").read_text())
    assert state["pruned"] == {pruned.trial_id: 1}

    again = oracle_for(tmp_path, "tuner.pruner=median", "tuner.pruner_min_trials=2", "training.epochs=4")
    again.reload()  # what a resumed sweep's tuner does
    assert again.pruned == {pruned.trial_id: 1}  # the decision survives a reload (resume, another chief)


def test_a_trial_handed_out_again_starts_with_no_epochs_and_no_decision(tmp_path):
    from mnist_exp.search.oracle import requeue_orphans

    oracle = oracle_for(tmp_path, "tuner.pruner=median", "tuner.pruner_min_trials=1", "training.epochs=3")
    run_trial(oracle, [0.9, 0.9, 0.9])
    trial = oracle.create_trial("gone")
    assert oracle.update_trial(trial.trial_id, {"val_accuracy": 0.1}, step=0).status == "STOPPED"
    assert oracle.pruned == {trial.trial_id: 1}
    requeue_orphans(oracle, ["tuner0"])  # its tuner never comes back: the trial goes to the retry queue
    again = oracle.create_trial("tuner0")
    assert again.trial_id == trial.trial_id
    assert not again.metrics.exists("val_accuracy") and trial.trial_id not in oracle.pruned
    assert oracle.update_trial(trial.trial_id, {"val_accuracy": 0.95}, step=0).status == "RUNNING"


def test_under_a_budget_a_pruned_search_starts_what_fits_until_the_next_rung_and_stops_it_there(tmp_path):
    """10 s per epoch, 9-epoch trials, asha's rungs at 1, 3 and 9 epochs. With 50 s left a whole trial (~99 s)
    would not fit, its first rung (~11 s) does: it starts; at rung 3 its next 6 epochs would not fit: it stops
    there as pruned, with its 3 epochs counted by the budget."""
    from mnist_exp.search.budget import Budget

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

        def tick(self):
            self.now += 10.0

    clock = Clock()
    budget = Budget(190, clock=clock)
    oracle = oracle_for(tmp_path, "tuner.pruner=asha", "tuner.pruner_min_trials=1", "training.epochs=9",
                        budget=budget)
    run_trial(oracle, [0.5 + 0.01 * e for e in range(9)], epoch_done=clock.tick)  # 90 s, runs its course
    clock.now = 140.0  # 50 s left
    assert not budget.fits(9)  # a whole trial: ~99 s
    late = run_trial(oracle, [0.9] * 9, epoch_done=clock.tick)  # ahead at every rung
    assert oracle.pruned == {late.trial_id: 3}
    assert late.status == "COMPLETED" and late.score == pytest.approx(0.9)
    assert budget.ended[-1] == (3, 30.0)  # the budget learns from the epochs it ran
    last = oracle.create_trial("tuner0")  # 20 s left: its first rung (~11 s) fits, and is what is counted
    assert last.status == "RUNNING" and budget.running[last.trial_id][1] == 1


def test_pruners_are_checked_in_the_experiment_file(tmp_path):
    from mnist_exp.runtime.errors import ConfigError
    from mnist_exp.spec.experiment import load_experiment

    for override, key in (("tuner.pruner=best", "tuner.pruner"), ("tuner.pruner_reduction_factor=1",
                                                                   "tuner.pruner_reduction_factor"),
                          ("tuner.pruner_warmup_epochs=0", "tuner.pruner_warmup_epochs")):
        with pytest.raises(ConfigError, match=key):
            load_experiment(ROOT / "experiments" / "quick.yaml", [override])
    with pytest.raises(ConfigError, match="hyperband stops trials itself"):
        load_experiment(ROOT / "experiments" / "quick.yaml", ["tuner.kind=hyperband", "tuner.pruner=asha"])


# --- real sweeps ---------------------------------------------------------------------------------------------

def trial_runs_by_lr():
    from helpers import runs

    return {float(r.data.params["learning_rate"]): r for r in runs(filter_string="tags.`mnist_exp.kind` = 'trial'")}


@pytest.mark.slow
def test_a_trial_behind_the_others_is_pruned_tagged_shown_and_never_the_best(store, capsys):
    from mnist_exp.cli import main

    from helpers import runs

    assert main(["sweep", str(pruned_sweep(store))]) == 0
    out = capsys.readouterr().out
    by_lr = trial_runs_by_lr()
    bad = by_lr[1e-7]
    assert bad.info.status == "FINISHED" and bad.data.tags["mnist_exp.pruned"] == "1"
    assert bad.data.metrics["epochs_run"] == 1 and "test_accuracy" in bad.data.metrics  # recorded as any trial
    assert "mnist_exp.pruned" not in by_lr[3e-3].data.tags and by_lr[3e-3].data.metrics["epochs_run"] == 3
    assert f"({bad.data.tags['mnist_exp.trial_id']}): val_accuracy=" in out and "(pruned after epoch 1)" in out
    [parent] = runs(filter_string="tags.`mnist_exp.kind` = 'sweep'")
    assert parent.data.tags["mnist_exp.best_trial_id"] != bad.data.tags["mnist_exp.trial_id"]
    good = by_lr[3e-3].data.tags["mnist_exp.trial_id"]
    pruned = json.loads((store / "mlruns" / "tuner" / "pruned" / "oracle.json").read_text())["pruned"]
    assert pruned[bad.data.tags["mnist_exp.trial_id"]] == 1 and good not in pruned  # (2e-3 may be behind too)
    assert {r.data.tags["mnist_exp.trial_id"]: int(r.data.tags["mnist_exp.pruned"])
            for r in by_lr.values() if "mnist_exp.pruned" in r.data.tags} == pruned

    assert main(["compare", "pruned", "--csv", str(store / "trials.csv")]) == 0
    board = capsys.readouterr().out
    header, *rows = [ln.split() for ln in board.splitlines() if ln.strip()][1:5]
    assert "pruned" in header and rows[0][0] == good  # the pruned trials after it, whatever their objective
    import pandas as pd

    csv = pd.read_csv(store / "trials.csv", dtype={"trial_id": str})
    assert csv.set_index("trial_id")["pruned"].dropna().astype(int).to_dict() == pruned


@pytest.mark.slow
def test_a_parallel_sweeps_workers_hear_the_chiefs_pruning_over_grpc(store):
    cli_here("sweep", pruned_sweep(store, parallel=2, epochs=4), check=0)
    by_lr = trial_runs_by_lr()
    assert len(by_lr) == 3 and {r.info.status for r in by_lr.values()} == {"FINISHED"}
    # the last trial starts once a worker is free, so at least one trial has run its four epochs by then
    assert by_lr[1e-7].data.tags.get("mnist_exp.pruned") == "1" and by_lr[1e-7].data.metrics["epochs_run"] == 1
