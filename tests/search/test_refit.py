"""The refit (mnist_exp/refit.py, ``--refit``): after the search, the best trial's configuration trained again
on every training digit as its own run under the sweep, once; ``promote`` then registers the refit. Real tiny
sweeps through the CLI on a real sqlite store."""

import os
import signal
import subprocess

from mlflow import MlflowClient

from mnist_exp.spec.levers import HP_DEFAULTS

from helpers import ROOT, VENV_BIN, cli_here, runs
import pytest

QUICK = ROOT / "experiments" / "quick.yaml"
SWEEP = [QUICK, "--set", "data.train_size=300", "--set", "data.test_size=100", "--epochs", "1", "--max-trials", "2",
         "--refit"]


def of_kind(kind):
    return runs(filter_string=f"tags.`mnist_exp.kind` = '{kind}'")


def best_trial(trials):
    finished = [r for r in trials if r.info.status == "FINISHED"]
    return max(finished, key=lambda r: (r.data.metrics["objective"], -r.info.start_time))


@pytest.mark.slow
def test_refit_trains_the_best_trial_on_all_training_digits_once_and_promote_registers_it(store):
    proc = cli_here("sweep", *SWEEP, check=0)
    [parent] = of_kind("sweep")
    trials = of_kind("trial")
    assert len(trials) == 2 and parent.info.status == "FINISHED"
    [refit] = of_kind("refit")
    best = best_trial(trials)
    t, p, m = refit.data.tags, refit.data.params, refit.data.metrics
    assert refit.info.status == "FINISHED"
    assert t["mlflow.parentRunId"] == parent.info.run_id
    assert t["mnist_exp.refit_of"] == best.info.run_id
    assert t["mnist_exp.trial_id"] == best.data.tags["mnist_exp.trial_id"] == parent.data.tags["mnist_exp.best_trial_id"]
    assert t["mnist_exp.sweep"] == "quick"
    assert p["data.n_train"] == "300" and p["data.n_val"] == "0"  # 270 train + 30 validation digits
    assert best.data.params["data.validation_split"] == "0.1" and float(p["data.validation_split"]) == 0
    assert p["training.epochs"] == best.data.params["training.epochs"] == "1"
    searched = [k for k in HP_DEFAULTS if k in best.data.params]
    assert {"learning_rate", "filters_1", "dropout_1", "batch_size"} <= set(searched)
    assert {k: p.get(k) for k in searched} == {k: best.data.params[k] for k in searched}  # the trial's configuration
    assert 0 <= m["test_accuracy"] <= 1 and t["mnist_exp.model_uri"].startswith(("runs:/", "models:/"))
    assert parent.data.tags["mnist_exp.refit_run_id"] == refit.info.run_id
    # the sweep's own row in the UI: its best trial's objective and epochs, the refit's test accuracy
    assert parent.data.metrics["objective"] == best.data.metrics["objective"]
    assert parent.data.metrics["epochs_run"] == best.data.metrics["epochs_run"]
    assert parent.data.metrics["test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert f"refit of trial {t['mnist_exp.trial_id']}: test accuracy" in proc.stdout

    # the same command again: the sweep resumes, finds the refit done, trains nothing
    proc = cli_here("sweep", *SWEEP, check=0)
    assert "resuming, 2 trial(s) done" in proc.stdout and "refit:" not in proc.stdout
    assert [r.info.run_id for r in of_kind("refit")] == [refit.info.run_id]
    assert len(of_kind("trial")) == 2
    assert of_kind("sweep")[0].data.metrics["test_accuracy"] == pytest.approx(m["test_accuracy"])  # still the refit's

    # promote registers the refit, not the trial it came from
    proc = cli_here("promote", "quick", check=0)
    assert "refit" in proc.stdout and refit.info.run_id in proc.stdout
    v = MlflowClient().get_model_version_by_alias("mnist-cnn", "champion")
    assert v.run_id == refit.info.run_id
    assert v.tags["mnist_exp.run_id"] == refit.info.run_id
    assert v.tags["mnist_exp.refit_of"] == best.info.run_id
    assert float(v.tags["metric.objective"]) == best.data.metrics["objective"]  # what the search chose it by


def test_refit_without_a_validation_split_is_a_config_error(store):
    proc = cli_here("sweep", *SWEEP, "--set", "data.validation_split=0", check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tuner.refit" in lines[0], proc.stderr
    assert not runs()


@pytest.mark.slow
def test_a_refit_killed_then_failing_keeps_the_sweep_and_the_next_run_refits(store):
    """kill -9 mid-refit, then a refit that raises, then a clean one: one sweep, three invocations."""
    sweep = [QUICK, "--set", "data.train_size=300", "--set", "data.test_size=100", "--epochs", "2",
             "--max-trials", "1", "--refit"]

    def sweep_with(fault):
        return subprocess.run([str(VENV_BIN / "mnist-exp"), "sweep", *map(str, sweep)], capture_output=True,
                              text=True, env={**os.environ, "MNIST_EXP_FAULT": fault}, timeout=300)

    proc = sweep_with("epoch_logged@3")  # the trial's 2 epochs, then SIGKILL after the refit's first
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    [parent] = of_kind("sweep")
    assert parent.info.status == "FINISHED" and [r.info.status for r in of_kind("trial")] == ["FINISHED"]
    [dead] = of_kind("refit")
    assert dead.info.status == "RUNNING"  # its process died without a word: the next command finds it

    proc = sweep_with("epoch_logged@1:raise")  # the search is done: the refit's first epoch is the first logged
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "refit of trial 0 failed: FaultRaised: fault point epoch_logged" in proc.stdout
    [parent] = of_kind("sweep")
    assert parent.info.status == "FINISHED" and "mnist_exp.refit_run_id" not in parent.data.tags
    assert parent.data.tags["mnist_exp.refit_error"].startswith("FaultRaised")
    [failed] = of_kind("refit")  # the killed refit continued in its own run after its first epoch, then failed
    assert failed.info.status == "FAILED" and failed.info.run_id == dead.info.run_id
    assert failed.data.tags["mnist_exp.resumed_from_epoch"] == "1"
    [trial] = of_kind("trial")
    out = cli_here("promote", check=0).stdout
    assert "refit" not in out and trial.info.run_id in out  # the trial's own model, not a failed refit's

    proc = cli_here("sweep", *sweep, check=0)
    refits = {r.info.status: r for r in of_kind("refit")}
    assert sorted(refits) == ["FAILED", "FINISHED"]  # a failed run is never resumed: a new refit
    assert of_kind("sweep")[0].data.tags["mnist_exp.refit_run_id"] == refits["FINISHED"].info.run_id
    assert not runs(filter_string="attributes.status = 'RUNNING'")
    assert "refit" in cli_here("promote", "--force", check=0).stdout  # however its accuracy compares
