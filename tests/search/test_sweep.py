import json
import os
import shlex
import signal
import subprocess
import threading

import pytest

from mnist_exp.cli import main
from mnist_exp.spec.experiment import load_experiment
from mnist_exp.model.data import load_data
from mnist_exp.runtime.errors import SweepError
from mnist_exp.spec.space import load_space
from mnist_exp.search.sweep import run_sweep
from mnist_exp.model.training import CNNHyperModel

from helpers import ROOT, VENV_BIN, cli_here, runs, write_yaml

TINY = f"""# mnist-exp sweep tiny.yaml
name: tiny
search_space: {ROOT / "search_spaces" / "small.yaml"}
data: {{source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}}
training: {{epochs: 1}}
tuner: {{kind: random, max_trials: 2, max_epochs: 2, factor: 2}}
"""


def sweep_runs(name="tiny"):
    parents = runs(filter_string=f"tags.`mnist_exp.kind` = 'sweep' and tags.`mnist_exp.sweep` = '{name}'")
    children = runs(filter_string=f"tags.`mnist_exp.kind` = 'trial' and tags.`mnist_exp.sweep` = '{name}'")
    return parents, children


def kt_trials(store, name="tiny"):
    out = {}
    for f in (store / "mlruns" / "tuner" / name).glob("trial_*/trial.json"):
        t = json.loads(f.read_text())
        out[t["trial_id"]] = t
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "bayesian", "grid", "hyperband"])
def test_each_tuner_kind_logs_one_parent_and_a_child_per_trial(store, kind, capsys):
    exp_file = write_yaml(store / "tiny.yaml", TINY)
    verbose = kind == "grid"  # Keras Tuner's tables and Keras's own epoch lines only with --verbose
    assert main(["sweep", str(exp_file), "--tuner", kind, *["--verbose"] * verbose]) == 0
    out = capsys.readouterr().out
    assert ("Search: Running Trial #2" in out) == verbose and ("Best val_accuracy So Far" in out) == verbose
    assert ("Value             |Best Value So Far |Hyperparameter" in out) == verbose
    assert "\r" not in out and "\x1b[" not in out  # stdout is no terminal here: whole lines, no bar redraws
    [parent], children = sweep_runs()
    trials = kt_trials(store)
    expected = 5 if kind == "hyperband" else 2  # Hyperband(max_epochs=2, factor=2) plans 5 trials
    assert len(trials) == expected and len(children) == expected
    assert f"trial {expected}/{expected}" in out and "ETA" in out and "best" in out
    assert parent.info.status == "FINISHED" and parent.data.params["tuner.kind"] == kind
    assert parent.data.tags["mnist_exp.best_trial_id"] in trials
    by_trial = {c.data.tags["mnist_exp.trial_id"]: c for c in children}
    assert set(by_trial) == set(trials)
    from mlflow import MlflowClient

    c = MlflowClient()
    for trial_id, run in by_trial.items():
        assert run.info.status == "FINISHED" and trials[trial_id]["status"] == "COMPLETED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        hp_values = trials[trial_id]["hyperparameters"]["values"]
        for name, value in hp_values.items():
            assert run.data.params[name] == (repr(value) if isinstance(value, float) else str(value)), name
        epochs = int(hp_values.get("tuner/epochs", 1))
        first = int(hp_values.get("tuner/initial_epoch", 0)) + 1
        steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "val_accuracy"))
        assert steps == list(range(first, epochs + 1))
        assert 0 <= run.data.metrics["test_accuracy"] <= 1
        assert {a.path for a in c.list_artifacts(run.info.run_id, "plots")} >= {"plots/learning_curves.png",
                                                                                 "plots/confusion_matrix.png"}
        assert run.data.tags["mnist_exp.model_uri"].startswith("models:/")
        assert_usage_logged(c, run)
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # every sampler stopped
    if kind == "hyperband":  # bookkeeping is logged under its own names, never as a search-space value
        resumed = [r for r in children if "tuner/trial_id" in r.data.params]
        assert resumed and all("tuner/epochs" in r.data.params for r in children)
        for r in children:  # fidelity.py: a trial logs its own length, not training.epochs, and ran it
            p = r.data.params
            epochs, initial = int(p["tuner/epochs"]), int(p.get("tuner/initial_epoch", 0))
            assert int(p["training.epochs"]) == epochs
            assert p.get("training.initial_epoch") == (str(initial) if initial else None)
            assert r.data.metrics["epochs_run"] == epochs - initial
        assert {int(r.data.params["tuner/epochs"]) for r in children} == {1, 2}  # both rungs ran
    parent_files = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "config", "plots"} <= parent_files
    plots = {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/objective_per_trial.png", "plots/objective_vs_hyperparameters.png"}
    board = c.download_artifacts(parent.info.run_id, "leaderboard.csv", str(store))
    import pandas as pd

    df = pd.read_csv(board)
    assert len(df) == expected and list(df["objective"]) == sorted(df["objective"], reverse=True)

    # The parent's description (MLflow's run note): what was searched, the best trial, the commands.
    note = parent.data.tags["mlflow.note.content"]
    best_id = parent.data.tags["mnist_exp.best_trial_id"]
    [best] = [r for r in children if r.data.tags["mnist_exp.trial_id"] == best_id]
    assert f"Trial **{best_id}**: `val_accuracy` {best.data.metrics['objective']:.4f}" in note
    assert f"test accuracy {best.data.metrics['test_accuracy']:.4f}" in note and best.info.run_id in note
    assert "`learning_rate`: one of 0.001, 0.003" in note and "200 train" not in note and "160 train" in note
    resume = "mnist-exp sweep tiny.yaml" + ("" if kind == "random" else f" --set tuner.kind={kind}")
    lines = note.splitlines()
    assert resume in lines and "mnist-exp compare tiny" in lines and "mnist-exp promote tiny" in lines
    if kind == "grid":  # the note's resume command, typed as it stands, resumes this sweep and trains nothing
        assert main(shlex.split(resume)[1:]) == 0
        assert "resuming, 2 trial(s) done" in capsys.readouterr().out and len(sweep_runs()[1]) == expected


def assert_usage_logged(client, run):
    """MLflow's system metrics (at least one sample, none after the run ended) and the process's own usage."""
    m = run.data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert hist and max(h.timestamp for h in hist) <= run.info.end_time, key
    assert 0 < m["process_cpu_s"] < 600
    assert 100 <= m["process_peak_rss_mb"] < 20000  # a TensorFlow process: hundreds of MB
    assert m["process_peak_rss_mb"] >= 0.9 * m["process_rss_end_mb"] > 0 and m["process_rss_start_mb"] > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("tuner.kind=annealing", "tuner.kind: must be one of"),
        ("tuner.max_trails=3", "tuner.max_trails: unknown key"),
        ("hp.filters_1=big", "hp.filters_1: filters_1 needs a int"),
    ],
)
def test_bad_experiment_exits_2_before_any_mlflow_write(store, override, message):
    exp_file = write_yaml(store / "tiny.yaml", TINY)
    proc = cli_here("sweep", exp_file, "--set", override, check=2)
    assert message in proc.stderr.strip().splitlines()[-1]
    assert runs() == [] and not (store / "mlruns" / "tuner").exists()


def test_bad_search_space_exits_2_naming_file_and_key(store):
    space = write_yaml(store / "space.yaml", "hyperparameters:\n  filters_1: {type: int, min: 64, max: 32}\n")
    exp_file = write_yaml(store / "tiny.yaml", TINY.replace(str(ROOT / "search_spaces" / "small.yaml"), str(space)))
    proc = cli_here("sweep", exp_file, check=2)
    assert proc.stderr.strip() == f"mnist-exp sweep: error: {space}: hyperparameters.filters_1.min: min 64 > max 32"
    assert runs() == []


class FaultyHyperModel(CNNHyperModel):
    """gelu trials get a loss that turns NaN; filters_1 == 32 trials raise."""

    def build(self, hp):
        import keras

        model = super().build(hp)
        if hp.get("activation") == "gelu":
            model.compile(optimizer="adam", loss=lambda y, p: keras.ops.mean(keras.ops.log(p - 2.0)),
                          metrics=["accuracy"])
        return model

    def fit(self, hp, model, *args, **kwargs):
        if hp.get("filters_1") == 32 and hp.get("activation") == "relu":
            raise RuntimeError("injected failure")
        return super().fit(hp, model, *args, **kwargs)


def _tiny_sweep(store, text):
    exp = load_experiment(write_yaml(store / "tiny.yaml", text))
    return exp, load_space(exp.search_space), load_data(exp.data, exp.seed)


@pytest.mark.slow
def test_nan_and_raising_trials_fail_in_both_tuner_and_mlflow_and_the_sweep_goes_on(store):
    space = write_yaml(store / "space.yaml", "hyperparameters:\n  activation: {type: choice, values: [relu, gelu]}\n"
                                             "  filters_1: {type: choice, values: [32, 64]}\n"
                                             "  batch_size: {type: fixed, value: 64}\n")
    text = TINY.replace(str(ROOT / "search_spaces" / "small.yaml"), str(space)).replace(
        "kind: random, max_trials: 2", "kind: grid, max_trials: 4, max_consecutive_failed_trials: 10")
    exp, sp, ds = _tiny_sweep(store, text)
    result = run_sweep(exp, sp, ds, os.environ["MLFLOW_TRACKING_URI"], hypermodel=FaultyHyperModel(1, 160))
    assert (result.completed, result.failed) == (1, 3)
    trials = kt_trials(store)
    _, children = sweep_runs()
    assert len(children) == 4
    for run in children:
        t = trials[run.data.tags["mnist_exp.trial_id"]]
        act, filters = t["hyperparameters"]["values"]["activation"], t["hyperparameters"]["values"]["filters_1"]
        if act == "gelu":
            assert run.info.status == "FAILED" and t["status"] == "FAILED"
            assert "NaNLoss: loss became nan" in run.data.tags["mnist_exp.error"]
        elif filters == 32:
            assert run.info.status == "FAILED" and t["status"] == "FAILED"
            assert "injected failure" in run.data.tags["mnist_exp.error"]
        else:
            assert run.info.status == "FINISHED" and t["status"] == "COMPLETED"
        assert run.data.metrics["process_cpu_s"] > 0  # a failed trial's run too says what it cost
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


class AlwaysFails(CNNHyperModel):
    def fit(self, hp, model, *args, **kwargs):
        raise ValueError("broken input pipeline")


@pytest.mark.slow
def test_sweep_where_every_trial_fails_raises_with_the_first_error(store):
    exp, sp, ds = _tiny_sweep(store, TINY)
    with pytest.raises(SweepError, match="every trial failed.*first error: trial 0: ValueError: broken input pipeline"):
        run_sweep(exp, sp, ds, os.environ["MLFLOW_TRACKING_URI"], hypermodel=AlwaysFails(1, 160))
    [parent], children = sweep_runs()
    assert parent.info.status == "FAILED" and len(children) == 2
    assert {c.info.status for c in children} == {"FAILED"}


@pytest.mark.slow
def test_resume_after_sigterm_and_sigkill_loses_nothing_and_duplicates_nothing(store):
    text = TINY.replace("name: tiny", "name: resumable").replace("max_trials: 2", "max_trials: 3").replace(
        "epochs: 1", "epochs: 4")
    exp_file = write_yaml(store / "resumable.yaml", text)
    cmd = [str(VENV_BIN / "mnist-exp"), "sweep", str(exp_file)]

    def sweep_until(fault: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "MNIST_EXP_FAULT": fault})

    # 1. SIGTERM mid-trial (after trial 0's second epoch): a clean stop, the trial's run and the parent end KILLED.
    proc = sweep_until("epoch_logged@2:term")
    assert proc.returncode == 143, proc.stdout[-2000:] + proc.stderr[-2000:]  # 128 + SIGTERM
    [parent], children = sweep_runs("resumable")
    assert parent.info.status == "KILLED"
    [first_victim] = [c.info.run_id for c in children if c.info.status == "KILLED"]

    # 2. Resume (trial 0 continues: epochs 3 and 4), then kill -9 after trial 1's second epoch: nothing cleans up.
    proc = sweep_until("epoch_logged@4")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    children = sweep_runs("resumable")[1]
    assert {c.info.run_id: c.info.status for c in children}[first_victim] == "FINISHED"
    [second_victim] = [c.info.run_id for c in children if c.info.status == "RUNNING"]

    # 3. Resume to the end.
    done = cli_here("sweep", exp_file, check=0)
    assert "resuming" in done.stdout
    # the dead process's trial run, RUNNING until now, is marked KILLED before the resume (liveness.reap)
    assert f"run {second_victim} (trial " in done.stderr and "its process (pid" in done.stderr, done.stderr[-2000:]
    parents, children = sweep_runs("resumable")
    assert [p.info.run_id for p in parents] == [parent.info.run_id] and parents[0].info.status == "FINISHED"
    status = {c.info.run_id: c.info.status for c in children}
    # both victims had logged an epoch: each continued in its own run from its last checkpoint, every epoch once
    from mlflow import MlflowClient

    assert status[first_victim] == "FINISHED" and status[second_victim] == "FINISHED"
    for c in children:
        if c.info.run_id in (first_victim, second_victim):
            assert c.data.tags["mnist_exp.resumed_from_epoch"] == "2"
            assert sorted(m.step for m in MlflowClient().get_metric_history(c.info.run_id, "loss")) == [1, 2, 3, 4]
    finished = [c.data.tags["mnist_exp.trial_id"] for c in children if c.info.status == "FINISHED"]
    assert sorted(finished) == ["0", "1", "2"]  # every trial once, none twice
    assert len(children) == 3  # one run per trial
    assert all(t["status"] == "COMPLETED" for t in kt_trials(store, "resumable").values())

    # 4. A changed tuner is refused; nothing is written.
    proc = cli_here("sweep", exp_file, "--tuner", "bayesian", check=2)
    assert "exists with a different tuner" in proc.stderr and "--overwrite" in proc.stderr
    assert len(sweep_runs("resumable")[1]) == 3

    # 5. A larger budget extends the same sweep by one trial.
    cli_here("sweep", exp_file, "--max-trials", "4", check=0)
    parents, children = sweep_runs("resumable")
    assert len(parents) == 1 and sorted(c.data.tags["mnist_exp.trial_id"] for c in children
                                        if c.info.status == "FINISHED") == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_overwrite_starts_afresh_and_keeps_the_old_parent_as_history(store):
    exp_file = write_yaml(store / "tiny.yaml", TINY.replace("max_trials: 2", "max_trials: 1"))
    assert main(["sweep", str(exp_file)]) == 0
    assert main(["sweep", str(exp_file), "--overwrite"]) == 0
    parents, children = sweep_runs()
    assert len(parents) == 2 and len(children) == 2
    old = min(parents, key=lambda r: r.info.start_time)
    assert old.data.tags.get("mnist_exp.superseded") == "replaced by --overwrite"
    [old_trial] = [c for c in children if c.data.tags["mlflow.parentRunId"] == old.info.run_id]
    assert old_trial.data.tags.get("mnist_exp.superseded") == "replaced by --overwrite"
