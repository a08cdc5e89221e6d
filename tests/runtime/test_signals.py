"""Ctrl-C / SIGTERM inside a trial are taken at safe points (mnist_exp/signals.py)."""

import os
import signal
import subprocess
import time

import keras
import pytest

from mnist_exp.runtime import signals

from helpers import VENV_BIN, runs, wait_for_store


def _kill_self(sig=signal.SIGTERM):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread at the next bytecode


def test_a_signal_inside_a_deferred_block_is_recorded_then_raised_by_check(capfd):
    before = signal.getsignal(signal.SIGTERM)
    with signals.handled():
        with signals.deferred():
            _kill_self()
            total = sum(range(1000))  # ordinary work goes on: nothing was raised mid-statement
        assert total == 499500
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            signals.check()
        signals.check()  # raised once, then cleared
        with pytest.raises(KeyboardInterrupt):  # outside a deferred block: at once
            _kill_self(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM: stopping at the next safe point (again to force)" in capfd.readouterr().err


def test_a_second_signal_forces():
    with signals.handled(), signals.deferred():
        _kill_self()
        with pytest.raises(KeyboardInterrupt):
            _kill_self()


def test_fit_stops_at_the_step_boundary_after_the_signal(embedded):
    from mnist_exp.model.data import one_hot, to_model_inputs
    from mnist_exp.model.cnn import build_model
    from mnist_exp.model.training import StopOnSignal

    seen = []

    class SignalAtBatch2(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(batch)
            if batch == 2:
                _kill_self()

    x, y = to_model_inputs(embedded["x_train"][:320]), one_hot(embedded["y_train"][:320])
    model = build_model(steps_per_execution=1)
    with signals.handled(), signals.deferred():
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[SignalAtBatch2(), StopOnSignal()])
    assert seen == [0, 1, 2]  # batch 2 ran to its end; no later batch started


@pytest.mark.slow
def test_train_interrupted_mid_fit_ends_its_run_killed(store):
    proc = subprocess.Popen([str(VENV_BIN / "mnist-exp"), "train", "--set", "data.train_size=400",
                             "--set", "data.test_size=100", "--epochs", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from mlflow import MlflowClient

    wait_for_store(proc)
    deadline = time.time() + 180
    while True:  # one epoch logged: the process is inside fit
        assert proc.poll() is None and time.time() < deadline
        found = [r for r in runs() if r.info.status == "RUNNING"]
        if found and MlflowClient().get_metric_history(found[0].info.run_id, "loss"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    [run] = runs()
    assert run.info.status == "KILLED"
    assert run.data.tags["mnist_exp.error"].startswith("KeyboardInterrupt")
    assert "SIGINT: stopping at the next safe point" in err
    assert run.data.metrics["loss"] and "test_accuracy" not in run.data.metrics
    hist = MlflowClient().get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert hist and max(h.timestamp for h in hist) <= run.info.end_time and run.data.metrics["process_cpu_s"] > 0


def test_handled_off_the_main_thread_changes_nothing():
    import threading

    seen = []

    def body():
        with signals.handled(), signals.deferred():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]
