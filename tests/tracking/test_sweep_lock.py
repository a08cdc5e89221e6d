"""One sweep of a name at a time (mnist_exp/sweep_lock.py): real processes hold, race for and lose leases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from mnist_exp.tracking import liveness, sweep_lock
from mnist_exp import tracking
from mnist_exp.cli import main
from mnist_exp.runtime.errors import ConfigError, SweepLocked

from helpers import ROOT, SWEEP_HOLDER as HOLDER, VENV_BIN, runs

QUICK = str(ROOT / "experiments" / "quick.yaml")
TINY_SWEEP = ["--set", "data.train_size=200", "--set", "data.test_size=100", "--epochs", "1", "--max-trials", "1"]

def _uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


def _existing_store() -> str:
    uri = _uri()
    tracking.configure(uri, "mnist-exp")  # the store and the experiment exist, as after any earlier command
    return uri


def _sweep_runs(name):
    parents = runs(filter_string=f"tags.`mnist_exp.kind` = 'sweep' and tags.`mnist_exp.sweep` = '{name}'")
    trials = runs(filter_string=f"tags.`mnist_exp.kind` = 'trial' and tags.`mnist_exp.sweep` = '{name}'")
    return parents, trials


@pytest.mark.slow
def test_a_held_sweep_is_refused_naming_its_holder_and_taken_over_once_the_holder_is_killed(store, capsys):
    uri = _existing_store()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, uri, "held"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["sweep", QUICK, "--name", "held", *TINY_SWEEP]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(
            rf"mnist-exp sweep: error: sweep held is already running: pid {holder.pid} on host {re.escape(liveness.HOST)} "
            r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(mnist-exp sweep experiments/quick\.yaml\); wait for it or stop it\n",
            err), err
        # nothing written: no run, no tuner state
        assert runs() == [] and not (store / "mlruns" / "tuner" / "held").exists()
        assert sweep_lock.backend_for(uri).holder("held").pid == holder.pid
    finally:
        holder.kill()  # SIGKILL: the holder gets no chance to release
        holder.wait()

    assert main(["sweep", QUICK, "--name", "held", *TINY_SWEEP]) == 0
    err = capsys.readouterr().err
    assert f"mnist-exp: sweep held: taking over the sweep lock of pid {holder.pid} on host {liveness.HOST}" in err
    assert "that process is gone" in err
    [parent], [trial] = _sweep_runs("held")
    assert parent.info.status == "FINISHED" and trial.info.status == "FINISHED"
    assert parent.data.tags["mnist_exp.pid"] == trial.data.tags["mnist_exp.pid"] == str(os.getpid())
    assert not {parent.info.run_id, trial.info.run_id} & set(liveness.HEARTBEAT.held())  # no beat after the end
    assert sweep_lock.backend_for(uri).holder("held") is None
    assert (store / "mlruns" / "leases" / "held.lease").read_text() == ""  # released cleanly: nobody to take over


# Says it is ready, waits for "go" on stdin, tries the lease and reports; a winner holds it until stdin closes.
RACER = """import json, os, sys
from mnist_exp.tracking import sweep_lock
from mnist_exp.runtime.errors import SweepLocked
print("ready", flush=True)
sys.stdin.readline()
try:
    with sweep_lock.acquire(sys.argv[1], "race"):
        print(json.dumps({"pid": os.getpid(), "won": True}), flush=True)
        sys.stdin.readline()  # held until every racer has reported
except SweepLocked as e:
    print(json.dumps({"pid": os.getpid(), "won": False, "error": str(e)}), flush=True)
"""


def test_processes_racing_for_one_lease_exactly_one_wins_each_round(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    for _ in range(6):
        procs = [subprocess.Popen([sys.executable, "-c", RACER, uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        assert [p.stdout.readline() for p in procs] == ["ready\n"] * 4  # all started and imported
        for p in procs:  # go at once
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.communicate(timeout=60)  # closes stdin: the winner releases
        winners = [r for r in results if r["won"]]
        assert len(winners) == 1, results
        for r in results:
            if not r["won"]:
                assert r["error"].startswith(f"sweep race is already running: pid {winners[0]['pid']} on host "), r


@pytest.mark.slow
def test_two_sweeps_of_one_name_started_together_one_runs_the_other_exits_2(store):
    _existing_store()
    for name in ("dup",):  # a new sweep on the existing store
        cmd = [str(VENV_BIN / "mnist-exp"), "sweep", QUICK, "--name", name, *TINY_SWEEP]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], outs
        winner = next(p for p in procs if p.returncode == 0)
        _, loser_err = outs[[p.returncode for p in procs].index(2)]
        assert f"mnist-exp sweep: error: sweep {name} is already running: pid {winner.pid} on host " in loser_err
        assert len(loser_err.strip().splitlines()) == 1, loser_err
        [parent], [trial] = _sweep_runs(name)  # one parent run, one trial: nothing duplicated
        assert parent.info.status == trial.info.status == "FINISHED"
        assert parent.data.tags["mnist_exp.pid"] == str(winner.pid)


def test_the_lease_is_reentrant_in_its_process_and_checks_the_name(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    backend = sweep_lock.backend_for(uri)
    with sweep_lock.acquire(uri, "a"):
        with sweep_lock.acquire(uri, "a"):  # a nested acquire of a held name passes through
            assert backend.holder("a").pid == os.getpid()
        assert backend.holder("a").pid == os.getpid()  # still held by the outer block
        ok, other = sweep_lock.FileSweepLock(tmp_path / "leases").try_acquire("a", sweep_lock.Holder.me())
        assert not ok and other.pid == os.getpid()  # another descriptor is another holder, as another process is
    assert backend.holder("a") is None
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ConfigError, match="not usable as a file name"):
            with sweep_lock.acquire(uri, bad):
                pass
    with pytest.raises(SweepLocked):
        with sweep_lock.acquire(uri, "b"):
            raise SweepLocked("inner")  # an error inside the block still releases
    assert backend.holder("b") is None


def test_a_record_left_by_a_dead_holder_is_not_reported_as_live(tmp_path):
    """Between taking the lock and writing its own record, a new holder's file still names the dead one:
    a loser waits for the live record instead of naming a gone process."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = sweep_lock.Holder(int(dead.stdout), liveness.HOST, "x:1", "mnist-exp sweep old.yaml", time.time() - 60)
    path = tmp_path / "leases" / "n.lease"
    path.parent.mkdir()
    path.write_text(json.dumps(gone.__dict__))
    assert sweep_lock.FileSweepLock._read_live(path, wait_s=0.2) is None
    me = sweep_lock.Holder.me()
    path.write_text(json.dumps(me.__dict__))
    assert sweep_lock.FileSweepLock._read_live(path, wait_s=0.2) == me
