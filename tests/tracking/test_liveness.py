"""No zombie runs (mnist_exp/liveness.py): a run whose process is gone is shown KILLED by the next command;
SIGHUP (a closed terminal) ends a sweep KILLED with exit 129."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import threading
import time

from mlflow import MlflowClient

from mnist_exp.tracking import liveness
from mnist_exp import tracking
from mnist_exp.cli import main

from helpers import ROOT, VENV_BIN, runs, wait_for_store
from mnist_exp.tracking import keys
import pytest


def _uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


def _wait_for_epoch(proc, kind: str, timeout=240) -> str:
    """The id of the RUNNING ``kind`` run once it has logged an epoch (the process is inside fit)."""
    wait_for_store(proc)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}"
        found = [r for r in runs(filter_string=f"tags.`mnist_exp.kind` = '{kind}'") if r.info.status == "RUNNING"]
        if found and MlflowClient().get_metric_history(found[0].info.run_id, "loss"):
            return found[0].info.run_id
        time.sleep(0.3)
    raise AssertionError(f"no {kind} run reached its first epoch within {timeout} s")


@pytest.mark.slow
def test_train_killed_outright_is_shown_killed_by_the_next_command(store, capsys):
    proc = subprocess.Popen([str(VENV_BIN / "mnist-exp"), "train", "--set", "data.train_size=400",
                             "--set", "data.test_size=100", "--epochs", "30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_id = _wait_for_epoch(proc, "train")
    proc.kill()  # kill -9: no handler, no finally
    proc.wait()
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "RUNNING"  # left behind, as the dead process cannot end it
    assert run.data.tags["mnist_exp.pid"] == str(proc.pid) and run.data.tags["mnist_exp.host"] == liveness.HOST

    assert main(["compare"]) == 0  # any command on the store
    why = f"its process (pid {proc.pid} on host {liveness.HOST}) is gone"
    err = capsys.readouterr().err
    assert f"mnist-exp compare: run {run_id} (train-baseline) was RUNNING but {why}: marked KILLED\n" in err, err
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["mnist_exp.error"] == f"marked KILLED by mnist-exp compare: {why}"
    assert run.info.end_time == max(round(float(run.data.tags["mnist_exp.heartbeat"]) * 1000), run.info.start_time)

    assert main(["compare"]) == 0  # nothing left to mark
    assert "marked KILLED" not in capsys.readouterr().err


def _run_with(client, experiment_id: str, tags: dict, start_time: int | None = None) -> str:
    return client.create_run(experiment_id, tags=tags, start_time=start_time).info.run_id


def test_runs_are_judged_by_pid_on_this_machine_and_by_heartbeat_from_others(store):
    uri = _uri()
    experiment_id = tracking.configure(uri, "mnist-exp")
    c = MlflowClient()
    now = time.time()
    gone_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    here = {"mnist_exp.host": liveness.HOST, "mnist_exp.heartbeat": f"{now:.3f}"}
    other = {"mnist_exp.pid": "4242", "mnist_exp.host": "elsewhere", "mnist_exp.proc_start": "other-boot:77"}
    ids = {
        "stale": _run_with(c, experiment_id, {**other, "mnist_exp.heartbeat": f"{now - 1000:.3f}"},
                           start_time=int((now - 2000) * 1000)),
        "fresh": _run_with(c, experiment_id, {**other, "mnist_exp.heartbeat": f"{now - 5:.3f}"}),
        "no_beat": _run_with(c, experiment_id, other),
        "legacy": _run_with(c, experiment_id, {"mnist_exp.kind": "trial"}),  # made by an older mnist-exp
        "gone": _run_with(c, experiment_id, {**here, "mnist_exp.pid": str(gone_pid),
                                             "mnist_exp.proc_start": f"{liveness.BOOT_ID}:123"}),
        "reused": _run_with(c, experiment_id, {**here, "mnist_exp.pid": str(os.getpid()),
                                               "mnist_exp.proc_start": f"{liveness.BOOT_ID}:1"}),
        "rebooted": _run_with(c, experiment_id, {**here, "mnist_exp.pid": str(os.getpid()),
                                                 "mnist_exp.proc_start": "old-boot:1",
                                                 "mnist_exp.heartbeat": f"{now - 3600:.3f}"}),
        "alive": tracking.create_run(experiment_id, "alive", {}),  # this process, its heartbeat held
    }
    # A resumed run (sweep parent) is taken over by the process that resumes it.
    ids["resumed"] = _run_with(c, experiment_id, {**other, "mnist_exp.heartbeat": f"{now - 1000:.3f}"})
    tracking.set_status(ids["resumed"], keys.RUNNING)
    try:
        out = io.StringIO()
        marked = liveness.reap(uri, "mnist-exp promote", out=out)
        assert sorted(marked) == sorted(ids[k] for k in ("stale", "no_beat", "gone", "reused", "rebooted"))
        status = {k: c.get_run(rid).info.status for k, rid in ids.items()}
        assert {k for k, s in status.items() if s == "RUNNING"} == {"fresh", "legacy", "alive", "resumed"}
        error = {k: c.get_run(rid).data.tags.get("mnist_exp.error") for k, rid in ids.items()}
        prefix = "marked KILLED by mnist-exp promote: "
        # 1000 s when it was made, a little more by now on a loaded machine
        assert re.fullmatch(re.escape(prefix + "no heartbeat from its process (pid 4242 on host elsewhere) for ") +
                            r"10[0-5]\d s", error["stale"]), error["stale"]
        assert error["no_beat"] == prefix + "its process (pid 4242 on host elsewhere) recorded no heartbeat"
        assert error["gone"] == prefix + f"its process (pid {gone_pid} on host {liveness.HOST}) is gone"
        assert error["reused"] == prefix + (f"its process (pid {os.getpid()} on host {liveness.HOST}) is gone "
                                            "(the pid now belongs to another process)")
        assert error["rebooted"].startswith(prefix + f"no heartbeat from its process (pid {os.getpid()}")
        assert abs(c.get_run(ids["stale"]).info.end_time - (now - 1000) * 1000) <= 1  # its last sign of life
        assert len(out.getvalue().splitlines()) == 5
        assert c.get_run(ids["resumed"]).data.tags["mnist_exp.pid"] == str(os.getpid())
        assert liveness.reap(uri, "mnist-exp promote") == []  # idempotent

        # Nothing to mark: a local store is judged without importing MLflow (compare's fast path).
        probe = ("import sys; from mnist_exp.tracking import liveness; "
                 "print(liveness.reap(sys.argv[1]), 'mlflow' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", probe, uri], capture_output=True, text=True, timeout=60)
        assert done.stdout == "[] False\n", done.stderr[-2000:]
    finally:
        for k in ("alive", "resumed"):
            tracking.set_status(ids[k], keys.FINISHED)
    assert not {ids["alive"], ids["resumed"]} & set(liveness.HEARTBEAT.held())


def test_the_heartbeat_beats_while_held_and_never_after_release(store):
    uri = _uri()
    experiment_id = tracking.configure(uri, "mnist-exp")
    c = MlflowClient()
    a, b = (_run_with(c, experiment_id, liveness.identity()) for _ in range(2))

    def beat(run_id):
        return float(c.get_run(run_id).data.tags["mnist_exp.heartbeat"])

    def wait_beats(run_id, n):
        seen, last, deadline = 0, beat(run_id), time.time() + 30
        while seen < n:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.02)
            if (v := beat(run_id)) != last:
                seen, last = seen + 1, v

    hb = liveness.Heartbeat(interval_s=0.05)
    try:
        hb.hold(a, uri)
        hb.hold(b, uri)
        wait_beats(a, 2)
        hb.release(a)  # returns once no write to a is in flight
        c.set_terminated(a, "FINISHED")
        after = beat(a)
        wait_beats(b, 3)  # the thread went on beating for b
        assert beat(a) == after
    finally:
        hb.stop()
    # A held run never keeps its process alive: it exits at once.
    code = ("import sys; from mnist_exp.tracking import liveness; liveness.HEARTBEAT.interval_s = 0.01; "
            "liveness.HEARTBEAT.hold(*sys.argv[1:])")
    assert subprocess.run([sys.executable, "-c", code, b, uri], timeout=60).returncode == 0


@pytest.mark.slow
def test_a_sweep_whose_terminal_closes_ends_killed_with_exit_129(store):
    """A real hang-up: the sweep runs on a pseudo-terminal as its controlling terminal; closing the terminal
    makes the kernel send SIGHUP. The trial and the parent end KILLED, the exit code is 128 + SIGHUP."""
    master, slave = os.openpty()
    make_ctty = "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
    cmd = [sys.executable, "-c", make_ctty, str(VENV_BIN / "mnist-exp"), "sweep", str(ROOT / "experiments" / "quick.yaml"),
           "--name", "hup", "--set", "data.train_size=400", "--set", "data.test_size=100", "--epochs", "30",
           "--max-trials", "1"]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    output, stop = [], threading.Event()

    def drain():  # a terminal nobody reads fills up and blocks the writer
        while not stop.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    output.append(os.read(master, 65536))
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        trial_id = _wait_for_epoch(proc, "trial")
    finally:
        stop.set()
        reader.join()
        os.close(master)  # the terminal goes away: SIGHUP to the sweep
    assert proc.wait(timeout=120) == 129, b"".join(output)[-3000:].decode(errors="replace")
    [parent] = runs(filter_string="tags.`mnist_exp.kind` = 'sweep'")
    [trial] = runs(filter_string="tags.`mnist_exp.kind` = 'trial'")
    assert trial.info.run_id == trial_id
    assert parent.info.status == "KILLED" and trial.info.status == "KILLED"
    assert trial.data.tags["mnist_exp.error"] == "interrupted"
