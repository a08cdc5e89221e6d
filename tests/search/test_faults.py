"""Exactly-once trials: a sweep killed with SIGKILL at each named fault point (mnist_exp/faults.py),
then resumed, has run every trial once — one FINISHED run per trial, each known to Keras Tuner's
oracle with the run's own objective — and leaves no run RUNNING."""

import json
import os
import subprocess

import pytest

from mnist_exp.cli import main

from helpers import TINY_SWEEP, VENV_BIN, cli_here, pruned_sweep, runs, write_yaml

TINY = TINY_SWEEP


def crash_at(exp_file, point: str) -> str:
    env = {**os.environ, "MNIST_EXP_FAULT": point}
    proc = subprocess.run([str(VENV_BIN / "mnist-exp"), "sweep", str(exp_file)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == -9, f"exit {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    assert f"[fault point {point.split('@')[0]}: SIGKILL]" in proc.stderr
    return proc.stdout


def oracle_trials(store, name="tiny") -> dict:
    return {json.loads(f.read_text())["trial_id"]: json.loads(f.read_text())
            for f in (store / "mlruns" / "tuner" / name).glob("trial_*/trial.json")}


def assert_exactly_once(store, n_trials: int = 2, name: str = "tiny"):
    """Every trial COMPLETED once in the oracle, exactly one FINISHED run per trial with the oracle's score,
    nothing RUNNING, the parent FINISHED and naming a best trial that has a FINISHED run."""
    current = [p for p in runs(filter_string="tags.`mnist_exp.kind` = 'sweep'")
               if not p.data.tags.get("mnist_exp.superseded")]
    assert len(current) == 1, [(p.info.run_id, p.info.status, p.data.tags) for p in current]
    parent = current[0]
    children = runs(filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert not [r for r in runs() if r.info.status == "RUNNING"]
    finished = {}
    for r in children:
        if r.info.status == "FINISHED":
            tid = r.data.tags["mnist_exp.trial_id"]
            assert tid not in finished, f"trial {tid} has two FINISHED runs"
            finished[tid] = r
    trials = oracle_trials(store, name)
    assert len(trials) == n_trials and {t["status"] for t in trials.values()} == {"COMPLETED"}
    assert set(finished) == set(trials)
    for tid, t in trials.items():
        assert t["score"] == pytest.approx(finished[tid].data.metrics["objective"], abs=1e-6), tid
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mnist_exp.best_trial_id"] in finished
    return parent, children


@pytest.mark.slow
@pytest.mark.parametrize("point, retrained", [
    ("trial_started", True),           # the run exists, RUNNING, nothing trained
    ("after_trial_logged", True),      # model, figures and test metrics logged; the run still RUNNING
    ("after_run_finished", False),     # the commit point passed; Keras Tuner has not recorded the trial
    ("after_trial_file_saved", False),  # trial.json says COMPLETED, oracle.json still has it ongoing
    ("after_trial_recorded", False),   # the oracle and the tuner saved
])
def test_kill_at_a_fault_point_then_resume_runs_each_trial_once(store, capsys, point, retrained):
    exp_file = write_yaml(store / "tiny.yaml", TINY)
    crash_at(exp_file, point)
    before = {r.info.run_id: r.info.status for r in runs(filter_string="tags.`mnist_exp.kind` = 'trial'")}
    assert list(before.values()) == ["RUNNING" if retrained else "FINISHED"]

    assert main(["sweep", str(exp_file)]) == 0
    out = capsys.readouterr().out
    assert "resuming, " in out
    parent, children = assert_exactly_once(store)
    [first] = before
    status = {r.info.run_id: r.info.status for r in children}
    if retrained:  # the killed attempt is KILLED, the trial ran again as a new run
        assert status[first] == "KILLED" and len(children) == 3
    else:  # the finished run was adopted, not trained again
        assert status[first] == "FINISHED" and len(children) == 2
        assert ("had finished before the interruption" in out) == (point != "after_trial_recorded")


@pytest.mark.slow
def test_kill_inside_a_pruning_decision_then_resume_runs_each_trial_once(store, capsys):
    exp_file = pruned_sweep(store)
    crash_at(exp_file, "after_prune_decided")  # the decision saved in oracle.json, the trial not told yet
    [killed] = [r for r in runs(filter_string="tags.`mnist_exp.kind` = 'trial'") if r.info.status == "RUNNING"]

    assert main(["sweep", str(exp_file)]) == 0
    assert "resuming, " in capsys.readouterr().out
    parent, children = assert_exactly_once(store, n_trials=3, name="pruned")
    status = {r.info.run_id: r.info.status for r in children}
    # that trial continued in its own run from its checkpoint, and the saved decision stopped it there
    assert status[killed.info.run_id] == "FINISHED" and len(children) == 3
    resumed = next(r for r in children if r.info.run_id == killed.info.run_id)
    assert resumed.data.tags["mnist_exp.pruned"] == resumed.data.tags["mnist_exp.resumed_from_epoch"]
    pruned = json.loads((store / "mlruns" / "tuner" / "pruned" / "oracle.json").read_text())["pruned"]
    assert pruned == {r.data.tags["mnist_exp.trial_id"]: int(r.data.tags["mnist_exp.pruned"])
                      for r in children if r.info.status == "FINISHED" and "mnist_exp.pruned" in r.data.tags}


@pytest.mark.slow
def test_kill_during_sweep_start_up_leaves_no_running_parent(store, capsys):
    exp_file = write_yaml(store / "tiny.yaml", TINY)
    crash_at(exp_file, "after_parent_created")
    [orphan] = runs(filter_string="tags.`mnist_exp.kind` = 'sweep'")
    assert orphan.info.status == "RUNNING"

    assert main(["sweep", str(exp_file)]) == 0
    assert "new;" in capsys.readouterr().out
    assert_exactly_once(store)
    [old] = [p for p in runs(filter_string="tags.`mnist_exp.kind` = 'sweep'") if p.info.run_id == orphan.info.run_id]
    assert old.info.status == "KILLED" and old.data.tags["mnist_exp.superseded"]


def _fill(path):
    """Write zeros into ``path`` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


@pytest.mark.slow
def test_disk_full_mid_trial_stops_the_sweep_cleanly_and_resume_finishes_it(store, capsys):
    """The store on a real 64 MiB tmpfs (root, as in CI), filled while the first trial trains."""
    import time

    from helpers import wait_for_store

    mnt = store / "mlruns"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        exp_file = write_yaml(store / "tiny.yaml", TINY.replace("epochs: 1", "epochs: 6").replace(
            "train_size: 200", "train_size: 400"))
        proc = subprocess.Popen([str(VENV_BIN / "mnist-exp"), "sweep", str(exp_file)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for_store(proc)
        from mnist_exp.tracking.readers import SqliteRuns

        deadline = time.time() + 180
        while time.time() < deadline:  # until the first trial has logged an epoch
            reader = SqliteRuns.open(os.environ["MLFLOW_TRACKING_URI"])
            try:
                trials = reader.runs(reader.experiment_id("mnist-exp"), {"mnist_exp.kind": "trial"}) if reader else []
                if any("loss" in r.data.metrics for r in trials):
                    break
            except Exception:  # locked by the writer
                pass
            finally:
                if reader:
                    reader.close()
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        _fill(mnt / "filler")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
        last = err.strip().splitlines()[-1]
        assert last.startswith("mnist-exp sweep: error: sweep tiny stopped: no space left on device"), last
        assert "run the same command again" in last

        (mnt / "filler").unlink()
        assert main(["sweep", str(exp_file)]) == 0
        assert "resuming, " in capsys.readouterr().out
        parent, children = assert_exactly_once(store)
        assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}
    finally:
        import mlflow

        mlflow.end_run()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over a sqlite store, which the test stops and restarts."""

    def __init__(self, root, port):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self):
        from mnist_exp.server.launch import JOB_RUNNER_OFF

        from helpers import wait_http

        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=self.root,
            env={**os.environ, **JOB_RUNNER_OFF})  # as mnist-exp starts servers
        wait_http(f"{self.uri}/health", self.proc)

    def stop(self):
        import signal

        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its worker processes, at once
        self.proc.wait(timeout=30)


def _wait_for_epoch(uri, proc, n_finished, timeout=240):
    """Until the sweep has n_finished FINISHED trial runs and a running one that logged an epoch."""
    import time

    from mlflow import MlflowClient

    c = MlflowClient(uri)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        exp = c.get_experiment_by_name("mnist-exp")
        trials = c.search_runs([exp.experiment_id], "tags.`mnist_exp.kind` = 'trial'") if exp else []
        done = [r for r in trials if r.info.status == "FINISHED"]
        running = [r for r in trials if r.info.status == "RUNNING" and "loss" in r.data.metrics]
        if len(done) >= n_finished and running:
            return
        time.sleep(0.3)
    raise AssertionError("the sweep did not reach a trial's first epoch in time")


@pytest.mark.slow
def test_tracking_server_outages_short_ridden_through_long_stops_and_resumes(tmp_path, monkeypatch):
    """A real tracking server cut off mid-trial for 5 s (every connection dropped, even mid-answer): the sweep
    carries on (MLflow's retries, and mnist-exp's for a read cut off); the server killed for good: the sweep stops
    with one line, and the same command resumes it once the server is back."""
    import time

    from helpers import Outage, free_port

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    server = MlflowServer(tmp_path / "server", free_port())
    server.start()
    network = Outage(server.port)  # the sweep reaches the server through it; the test reads the server directly
    monkeypatch.setenv("MLFLOW_TRACKING_URI", network.uri)
    exp_file = write_yaml(tmp_path / "tiny.yaml", TINY.replace("epochs: 1", "epochs: 3").replace(
        "train_size: 200", "train_size: 400").replace("max_trials: 2", "max_trials: 1"))
    cmd = [str(VENV_BIN / "mnist-exp"), "sweep", str(exp_file)]
    try:
        # 1. Away for 5 s in the middle of trial 0: nothing lost, nothing duplicated.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_epoch(server.uri, proc, 0)
        network.down()
        time.sleep(5)  # the outage itself, not a wait for something
        network.up()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:] + err[-3000:]

        # 2. Away for longer than the retries (shortened here through MLflow's own settings, which mnist-exp
        # keeps when the user sets them): the sweep stops with one line, the trial in progress is not FAILED.
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
        proc = subprocess.Popen(cmd + ["--max-trials", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        _wait_for_epoch(server.uri, proc, 1)
        server.stop()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, out[-2000:] + err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("mnist-exp sweep: error: sweep tiny stopped: ") and "run the same command again" in last

        # 3. Back again: the same command resumes and finishes, every trial once.
        server.start()
        done = cli_here("sweep", exp_file, "--max-trials", "2", check=0)
        assert "resuming, 1 trial(s) done" in done.stdout
        import mlflow

        mlflow.set_tracking_uri(server.uri)
        parent, children = assert_exactly_once(tmp_path, n_trials=2)
        # the attempt the outage cut short: continued in its own run when the outage came mid-fit (it had a
        # checkpoint), or KILLED beside a new run when it came during the trial's evaluation
        resumed = [r for r in children if "mnist_exp.resumed_from_epoch" in r.data.tags]
        assert {r.info.status for r in children} == ({"FINISHED"} if resumed else {"FINISHED", "KILLED"})
        assert len(children) == (2 if resumed else 3)
    finally:
        network.down()
        if server.proc and server.proc.poll() is None:
            server.stop()


FOUR_EPOCHS = TINY.replace("training: {epochs: 1}", "training: {epochs: 4}").replace("max_trials: 2", "max_trials: 1")


@pytest.mark.slow
def test_a_trial_killed_between_epochs_resumes_in_its_own_run_from_its_last_checkpoint(store, capsys):
    """Killed after epoch 2's files were uploaded but before its pointer moved (resumes after epoch 1: epoch 2 trains
    again, logged once), then, resumed, killed after epoch 3's pointer moved but before its metrics were logged
    (resumes after epoch 3: its metrics come from the checkpoint); one run for the trial throughout."""
    from mlflow import MlflowClient

    exp_file = write_yaml(store / "tiny.yaml", FOUR_EPOCHS)
    crash_at(exp_file, "checkpoint_uploaded@2")
    [killed] = runs(filter_string="tags.`mnist_exp.kind` = 'trial'")
    out = crash_at(exp_file, "epoch_checkpointed@2")  # this process's second checkpoint: epoch 3's
    assert f"trial 0: run {killed.info.run_id} resumed after epoch 1" in out
    assert "trial 0 epoch 2/4" in out and "trial 0 epoch 3/4" not in out and "trial 0 epoch 1/4" not in out
    assert main(["sweep", str(exp_file)]) == 0
    out = capsys.readouterr().out
    assert f"[sweep tiny] trial 0: run {killed.info.run_id} resumed after epoch 3" in out
    assert "trial 0 epoch 3/4" not in out and "trial 0 epoch 4/4" in out
    parent, children = assert_exactly_once(store, n_trials=1)
    [run] = children  # one run per trial: the killed attempt's, reopened twice
    assert run.info.run_id == killed.info.run_id and run.data.tags["mnist_exp.resumed_from_epoch"] == "3"  # the latest
    for metric in ("loss", "val_accuracy"):  # every epoch logged once
        assert sorted(m.step for m in MlflowClient().get_metric_history(run.info.run_id, metric)) == [1, 2, 3, 4]
    assert run.data.metrics["epochs_run"] == 4
    assert "mnist_exp.checkpoint" not in run.data.tags and not MlflowClient().list_artifacts(run.info.run_id, "checkpoint")
