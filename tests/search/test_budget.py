"""A sweep's wall-clock budget (mnist_exp/budget.py, ``--budget``): durations, the trial-length estimate,
which trials are admitted (on an injected clock), and real tiny sweeps that stop between trials, never in
one, and resume with a larger budget."""

import re

import pytest

from mnist_exp.search.budget import SAFETY, Budget
from mnist_exp.spec.durations import parse_duration

from helpers import ROOT, cli_here, runs

QUICK = ROOT / "experiments" / "quick.yaml"
SWEEP = [QUICK, "--set", "data.train_size=300", "--set", "data.test_size=100", "--epochs", "2", "--max-trials", "5"]
STOP = re.compile(r"sweep quick: (budget 0:00:08: trial (\d+) needs ~(\d+):(\d\d):(\d\d), (\d+):(\d\d):(\d\d) left: "
                  r"not started); the rest of the search waits")


class Clock:
    """A clock the test moves: ``now`` seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def ran(budget: Budget, clock: Clock, trial_id: str, epochs: int, seconds: float) -> None:
    """One trial through the budget as the oracle drives it: admitted, ``seconds`` pass, ended."""
    assert budget.admits(trial_id, epochs), budget.refused
    clock.now += seconds
    budget.trial_ended(trial_id)


# --- parse_duration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1d", 86400),
                                           ("1.5h", 5400), (30, 30), (2.5, 2.5), (None, None)])
def test_parse_duration_reads_units_and_plain_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["2x", "", "-5", 0, "0s", -5, "h", "2h garbage", True, float("nan"), [60]])
def test_parse_duration_refuses_what_is_not_a_positive_duration(bad):
    with pytest.raises(ValueError, match="duration|more than 0"):
        parse_duration(bad)


# --- Budget on an injected clock ------------------------------------------------------------------------


def test_before_any_trial_ended_every_trial_is_admitted():
    clock = Clock()
    budget = Budget(10, clock=clock)
    assert budget.estimate(1) is None
    assert all(budget.admits(str(i), 1000) for i in range(4))  # nothing known yet: all start (in parallel)
    assert set(budget.running) == {"0", "1", "2", "3"} and budget.refused is None


def test_one_trial_length_estimates_from_the_slowest_seconds_per_epoch():
    clock = Clock()
    budget = Budget(3600, clock=clock)
    ran(budget, clock, "0", 2, 10.0)  # 5 s per epoch
    ran(budget, clock, "1", 2, 14.0)  # 7 s per epoch: the slowest rules
    assert budget.estimate(2) == pytest.approx(SAFETY * 2 * 7)
    assert budget.estimate(5) == pytest.approx(SAFETY * 5 * 7)


def test_two_trial_lengths_fit_fixed_plus_per_epoch_cost():
    clock = Clock()
    budget = Budget(3600, clock=clock)
    ran(budget, clock, "0", 1, 5.0)
    ran(budget, clock, "1", 3, 9.0)  # exactly 3 s fixed + 2 s per epoch
    assert budget.estimate(5) == pytest.approx(SAFETY * (3 + 2 * 5))
    assert budget.estimate(5) < SAFETY * 5 * 5  # the fixed cost is no longer counted in every epoch
    # noisy trials: the least-squares fixed cost (4 s), and the slowest trial's per-epoch cost once that is off
    # (7 s - 4 s over 1 epoch = 3 s), stretched to the long trial: a slow configuration is not averaged away
    clock = Clock()
    budget = Budget(3600, clock=clock)
    for i, (epochs, seconds) in enumerate([(1, 5.0), (1, 7.0), (3, 9.0), (3, 11.0)]):
        ran(budget, clock, str(i), epochs, seconds)
    assert budget.estimate(5) == pytest.approx(SAFETY * (4 + 3 * 5))


def test_a_fit_that_does_not_grow_with_epochs_falls_back_to_seconds_per_epoch():
    clock = Clock()
    budget = Budget(3600, clock=clock)
    ran(budget, clock, "0", 1, 10.0)
    ran(budget, clock, "1", 3, 9.0)  # longer trial, less time: no usable slope
    assert budget.estimate(2) == pytest.approx(SAFETY * 2 * 10)


def test_a_trial_that_would_overrun_is_refused_and_named():
    clock = Clock()
    budget = Budget(60, clock=clock)
    ran(budget, clock, "0", 2, 20.0)  # 10 s per epoch: a 2-epoch trial needs ~22 s
    ran(budget, clock, "1", 2, 20.0)  # 40 s used, 20 s left
    assert not budget.admits("2", 2)
    assert budget.refused == "budget 0:01:00: trial 2 needs ~0:00:22, 0:00:20 left: not started"
    assert "2" not in budget.running
    assert budget.admits("3", 1)  # a shorter trial (~11 s) still fits
    assert budget.refused is None and budget.refused_trial is None  # the sweep is no longer waiting on one
    assert budget.fits(1) and not budget.fits(2)  # fits() asks the same question and records nothing
    assert "3" in budget.running and "2" not in budget.running


def test_nothing_starts_once_the_time_is_spent():
    clock = Clock()
    budget = Budget(10, clock=clock)
    clock.now = 11
    assert not budget.admits("0", 1)
    assert budget.refused == "budget 0:00:10: trial 0 cannot start, 0:00:00 left: not started"


def test_room_kept_for_the_refit_refuses_trials_earlier():
    clock, plain_clock = Clock(), Clock()
    budget = Budget(100, refit=True, refit_scale=1.5, clock=clock)
    plain = Budget(100, clock=plain_clock)
    for b, c in ((budget, clock), (plain, plain_clock)):
        ran(b, c, "0", 2, 20.0)  # a 2-epoch trial needs ~22 s; the refit ~22 x 1.5 = 33 s
        ran(b, c, "1", 2, 20.0)
        ran(b, c, "2", 2, 20.0)  # 40 s left: 22 fits, 22 + 33 does not
    assert plain.admits("3", 2)
    assert not budget.admits("3", 2)
    assert budget.refused == ("budget 0:01:40: trial 3 needs ~0:00:22 (+ ~0:00:33 kept for the refit), "
                              "0:00:40 left: not started")


def test_the_refit_reserve_is_sized_by_the_longest_trial_that_may_end_best_not_by_the_longest_allowed():
    """Hyperband's 1-epoch trials keep room for a 1-epoch refit; once a 9-epoch trial is the best so far, or
    running, or the candidate, the room kept is for 9 epochs (a trial continuing another is refitted from 0)."""
    clock = Clock()
    budget = Budget(300, refit=True, clock=clock)
    ran(budget, clock, "0", 1, 10.0)  # ~11 s per epoch from now on
    assert budget.fits(1, refit_epochs=1) and budget.fits(1, refit_epochs=9)  # 11 + 11 and 11 + 99 of 290 left
    clock.now = 200.0  # 100 s left
    assert budget.fits(1, refit_epochs=1)  # 11 + 11
    assert not budget.fits(1, refit_epochs=9)  # 11 + 99: the best so far trained 9 epochs
    assert not budget.fits(6)  # 66 + 66
    assert budget.admits("1", 2, refit_epochs=6)  # 22 + 66
    clock.now = 250.0  # 50 s left
    assert not budget.admits("2", 1)  # trial 1 is running and may end best: its 6-epoch refit is kept (11 + 66)
    assert budget.refused.endswith("trial 2 needs ~0:00:11 (+ ~0:01:06 kept for the refit), 0:00:50 left: not started")
    assert budget.refused_trial == ("2", 1, 1)


def test_a_lost_or_unknown_trial_teaches_the_estimate_nothing():
    clock = Clock()
    budget = Budget(100, clock=clock)
    assert budget.admits("0", 2)
    clock.now += 90  # a worker went silent for 90 s
    budget.trial_lost("0")
    assert budget.estimate(2) is None and not budget.running
    budget.trial_ended("0")  # already lost: not counted as ended either
    budget.trial_ended("7")  # never admitted
    assert budget.estimate(2) is None
    ran(budget, clock, "1", 2, 4.0)
    assert budget.estimate(2) == pytest.approx(SAFETY * 2 * 2)  # only the trial that ended counts


def test_a_resumed_budget_knows_the_finished_trials_lengths_before_its_first_trial_ends():
    clock = Clock()
    budget = Budget(25, clock=clock, history=[(2, 20.0), (2, 24.0)])  # (epochs, seconds) of earlier trials
    assert budget.estimate(2) == pytest.approx(SAFETY * 24)  # the slowest known, as if they had run here
    assert not budget.admits("2", 2)
    assert budget.refused == "budget 0:00:25: trial 2 needs ~0:00:26, 0:00:25 left: not started"
    assert budget.admits("3", 1)
    ran(budget, clock, "4", 1, 2.0)  # once a trial of this invocation has ended, its own times rule
    assert budget.estimate(2) == pytest.approx(SAFETY * 2 * 2)


def test_a_resumed_sweep_reads_each_finished_trials_first_run_and_its_own_length(store):
    """sweep_budget.trial_lengths on a real store: Hyperband's string params, attempts that did not finish, runs
    without a time, a trial with two FINISHED runs and another sweep's trials."""
    from mlflow import MlflowClient

    from mnist_exp import tracking
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.search.sweep_budget import trial_lengths

    exp = load_experiment(None, ["tuner.budget=1h", "training.epochs=4"])
    eid = tracking.configure(f"sqlite:///{store / 'mlruns' / 'mlflow.db'}", exp.mlflow_experiment)
    c = MlflowClient()
    parent, other = (c.create_run(eid).info.run_id for _ in range(2))

    def trial(tid, status, seconds=None, params=None, under=parent, metrics=None):
        rid = c.create_run(eid, tags={"mnist_exp.kind": "trial", "mnist_exp.trial_id": tid,
                                      "mlflow.parentRunId": under}).info.run_id
        for k, v in (params or {}).items():
            c.log_param(rid, k, v)
        for k, v in {**({"trial_time_s": seconds} if seconds is not None else {}), **(metrics or {})}.items():
            c.log_metric(rid, k, v)
        c.set_terminated(rid, status)

    trial("0000", "FINISHED", 10.0)  # training.epochs: 4
    trial("0005", "FINISHED", 6.0, metrics={"epochs_run": 3})  # early stopping ended it after 3 of 4
    trial("0001", "FINISHED", 9.0, {"tuner/epochs": 3, "tuner/initial_epoch": 1})  # continued: 2 epochs
    trial("0001", "FINISHED", 0.5, {"tuner/epochs": 3, "tuner/initial_epoch": 1})  # a later duplicate
    trial("0002", "KILLED", 50.0)
    trial("0003", "FINISHED")  # no time logged (an older release)
    trial("0004", "FINISHED", 99.0, under=other)
    assert sorted(trial_lengths(exp, eid, parent)) == [(2, 9.0), (3, 6.0), (4, 10.0)]


# --- real sweeps ------------------------------------------------------------------------------------------


def trial_runs():
    return runs(filter_string="tags.`mnist_exp.kind` = 'trial' and tags.`mnist_exp.sweep` = 'quick'")


def seconds(h, m, s) -> int:
    return int(h) * 3600 + int(m) * 60 + int(s)


@pytest.mark.slow
def test_a_budget_stops_the_sweep_between_trials_and_a_larger_one_finishes_it(store):
    # (a) 8 s: the first trial always starts (nothing is known yet); the sweep stops before five.
    proc = cli_here("sweep", *SWEEP, "--budget", "8s", check=0)
    m = STOP.search(proc.stdout)
    assert m, proc.stdout[-3000:]
    refused, need, left = m.group(2), seconds(*m.group(3, 4, 5)), seconds(*m.group(6, 7, 8))
    assert need >= left  # refused because it would overrun (displayed values are rounded)
    assert "| budget left " in proc.stdout
    [parent] = runs(filter_string="tags.`mnist_exp.kind` = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mnist_exp.budget_stop"] == m.group(1)
    assert not runs(filter_string="attributes.status = 'RUNNING'")
    started = trial_runs()
    assert 1 <= len(started) < 5
    assert all(r.info.status == "FINISHED" for r in started)  # no trial was cut off
    ids = sorted(int(r.data.tags["mnist_exp.trial_id"]) for r in started)
    assert ids == list(range(len(started)))
    assert int(refused) == len(started)  # the refused trial is the first one never started

    # (a2) resumed with 1 s: the finished trials' runs tell this invocation how long a trial takes, so its
    # first trial is refused with an estimate ("needs ~"), not started blind ("cannot start" or a run).
    proc = cli_here("sweep", *SWEEP, "--budget", "1s", check=0)
    assert f"sweep quick: budget 0:00:01: trial {refused} needs ~" in proc.stdout, proc.stdout[-3000:]
    assert len(trial_runs()) == len(started)
    assert not runs(filter_string="attributes.status = 'RUNNING'")

    # (b) the same command with 10 minutes resumes: the refused trial runs first, nothing runs twice.
    before = {r.info.run_id for r in started}
    proc = cli_here("sweep", *SWEEP, "--budget", "10m", check=0)
    assert f"resuming, {len(started)} trial(s) done" in proc.stdout
    assert "not started" not in proc.stdout
    done = trial_runs()
    assert len(done) == 5 and all(r.info.status == "FINISHED" for r in done)
    assert sorted(int(r.data.tags["mnist_exp.trial_id"]) for r in done) == list(range(5))
    assert [r for r in done if int(r.data.tags["mnist_exp.trial_id"]) == int(refused)]
    new = sorted((r for r in done if r.info.run_id not in before), key=lambda r: r.info.start_time)
    assert int(new[0].data.tags["mnist_exp.trial_id"]) == int(refused)
    [parent] = runs(filter_string="tags.`mnist_exp.kind` = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert "mnist_exp.budget_stop" not in parent.data.tags  # nothing waits any more
    assert not runs(filter_string="attributes.status = 'RUNNING'")


@pytest.mark.parametrize("args", [["--budget", "2x"], ["--set", "tuner.budget=0"], ["--budget=-1h"]])
def test_a_bad_budget_is_one_line_naming_tuner_budget_and_leaves_no_run(store, args):
    proc = cli_here("sweep", QUICK, *args, check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tuner.budget" in lines[0], proc.stderr
    assert not runs()
    assert not (store / "mlruns" / "tuner").exists()
