"""A chief (``sweep --serve``) and ``mnist-exp worker`` processes on loopback, each worker in its own folder
and HOME, a real sqlite store. tests/search/distributed/test_multihost.py runs a sweep over network namespaces with a tracking
server on PostgreSQL (every trial once, a wrong token, a worker killed, cut off, the chief killed);
tests/search/distributed/test_launch.py launches workers with ssh-style commands."""

import os
import re
import signal
import subprocess

from helpers import ROOT, VENV_BIN, cli_here, free_port, runs, wait_for_store, write_yaml
import pytest

TOKEN = "t0k3n-for-tests-0123456789abcdef"

CLUSTER = """# mnist-exp sweep cl.yaml --serve 127.0.0.1:PORT --parallel 0
name: cl
search_space: SPACE
data: {source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}
training: {epochs: EPOCHS}
tuner: {kind: random, max_trials: TRIALS}
"""


def sweep_yaml(epochs: int, trials: int) -> str:
    return (CLUSTER.replace("SPACE", str(ROOT / "search_spaces" / "small.yaml"))
            .replace("EPOCHS", str(epochs)).replace("TRIALS", str(trials)))


def trial_runs(name="cl"):
    return runs(filter_string=f"tags.`mnist_exp.kind` = 'trial' and tags.`mnist_exp.sweep` = '{name}'")


def start(args, cwd, env=None, **kw):
    full = {**os.environ, "MNIST_EXP_TOKEN": TOKEN, "HOME": str(cwd), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(VENV_BIN / "mnist-exp"), *map(str, args)], cwd=cwd, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kw)


def finish(proc, timeout=300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out:\n{out[-4000:]}") from None
    return out


def chief(store, port, epochs=1, trials=4, lease=6, extra=()):
    exp = write_yaml(store / "cl.yaml", sweep_yaml(epochs, trials))
    return start(["sweep", exp, "--serve", f"127.0.0.1:{port}", "--parallel", "0", "--lease-timeout", lease, *extra],
                 store)


def worker(store, port, wid, env=None):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    return start(["worker", "--chief", f"127.0.0.1:{port}", "--tracking-uri", uri, "--id", wid, "--threads", "1"],
                 store / "hosts" / wid, env)


def once_each(n):
    """Every trial has exactly one FINISHED run; returns the runs by trial id."""
    done = {}
    for r in trial_runs():
        if r.info.status == "FINISHED":
            tid = r.data.tags["mnist_exp.trial_id"]
            assert tid not in done, f"trial {tid} finished twice"
            done[tid] = r
    assert sorted(done) == [str(i) for i in range(n)], sorted(done)
    return done


@pytest.mark.slow
def test_serve_needs_a_token_and_a_valid_address(store):
    exp = write_yaml(store / "cl.yaml", sweep_yaml(1, 1))
    env = {k: v for k, v in os.environ.items() if k != "MNIST_EXP_TOKEN"}
    p = subprocess.run([str(VENV_BIN / "mnist-exp"), "sweep", str(exp), "--serve", "127.0.0.1:1234"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("mnist-exp sweep: error: MNIST_EXP_TOKEN: not set")
    for bad, why in (("localhost", "must be HOST:PORT"), ("127.0.0.1:99999", "port must be 1-65535")):
        p = cli_here("sweep", exp, "--serve", bad, env={"MNIST_EXP_TOKEN": TOKEN})
        assert p.returncode == 2 and why in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = cli_here("worker", "--chief", "127.0.0.1:1", env={"MNIST_EXP_TOKEN": "short"})
    assert p.returncode == 2 and "MNIST_EXP_TOKEN: at least 16 characters" in p.stderr
    assert not (store / "mlruns" / "tuner" / "cl").exists()


@pytest.mark.slow
def test_a_worker_restarted_with_its_id_gets_its_own_trial_back(store):
    """Within the lease the chief keeps the trial for its worker: the restarted worker (same --id) continues it
    in the same run from its last completed epoch (the killed process's checkpoint, with the store)."""
    port = free_port()
    ch = chief(store, port, epochs=6, trials=2, lease=60)
    wait_for_store(ch)
    wa = worker(store, port, "wa", env={"MNIST_EXP_FAULT": "epoch_logged@3"})  # SIGKILL after its third epoch
    finish(wa, 300)
    assert wa.returncode == -signal.SIGKILL
    [first] = [r for r in trial_runs() if r.info.status == "RUNNING"]
    again = worker(store, port, "wa")
    out_a = finish(again, 400)
    out = finish(ch, 60)
    assert ch.returncode == 0 and again.returncode == 0, out[-3000:] + out_a[-3000:]
    assert "goes back to the queue" not in out  # nothing was revoked: the trial waited for its worker
    tid = first.data.tags["mnist_exp.trial_id"]
    found = re.search(rf"^\[sweep cl wa\] trial {tid}: run {first.info.run_id} resumed after epoch (\d+)$", out_a, re.M)
    assert found, out_a[-3000:]
    k = int(found[1])
    assert k == 3 and re.search(rf"^\[sweep cl wa\] trial {tid} epoch {k + 1}/6", out_a, re.M), out_a[-3000:]
    assert not re.search(rf"^\[sweep cl wa\] trial {tid} epoch {k}/6", out_a, re.M), out_a[-3000:]
    done = once_each(2)
    assert done[tid].info.run_id == first.info.run_id and len(trial_runs()) == 2  # one run per trial
    from mlflow import MlflowClient

    steps = sorted(m.step for m in MlflowClient().get_metric_history(first.info.run_id, "loss"))
    assert steps == list(range(1, 7))  # curves continuous, every epoch once
    assert done[tid].data.tags["mnist_exp.resumed_from_epoch"] == str(k)


@pytest.mark.slow
def test_a_remote_workers_trial_is_pruned_by_the_chief(store):
    """The pruner decides in the chief from what a worker on another machine reports after each epoch (Keras
    Tuner's gRPC protocol): the worker's trial that learns nothing stops after its first epoch, tagged pruned."""
    from helpers import pruned_sweep

    port = free_port()
    ch = start(["sweep", pruned_sweep(store, epochs=3), "--serve", f"127.0.0.1:{port}", "--parallel", "0"], store)
    wait_for_store(ch)
    wa = worker(store, port, "wa")
    out_a, out = finish(wa, 400), finish(ch, 120)
    assert ch.returncode == 0 and wa.returncode == 0, out[-3000:] + out_a[-3000:]
    by_lr = {float(r.data.params["learning_rate"]): r for r in trial_runs("pruned")}
    assert sorted(by_lr) == [1e-7, 2e-3, 3e-3] and {r.info.status for r in by_lr.values()} == {"FINISHED"}
    assert {r.data.tags["mnist_exp.tuner_id"] for r in by_lr.values()} == {"wa"}
    assert by_lr[1e-7].data.tags.get("mnist_exp.pruned") == "1" and by_lr[1e-7].data.metrics["epochs_run"] == 1
    assert "mnist_exp.pruned" not in by_lr[3e-3].data.tags and by_lr[3e-3].data.metrics["epochs_run"] == 3
    assert re.search(r"trial \d+/\d+ \(2\): val_accuracy=\S+ \(pruned after epoch 1\)", out), out[-3000:]
