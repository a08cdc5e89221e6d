"""What the terminal shows: one line per epoch and per trial by default, no bar redraws in a pipe, and a
progress bar (--verbose) that never counts past its end."""

import os
import pty
import re

import numpy as np

from mnist_exp.runtime import terminal

from helpers import ROOT, cli, runs, write_yaml
import pytest

COUNT = re.compile(r"(\d+)/(\d+)")
EPOCH = re.compile(r"^\[sweep tiny\] trial (\S+) epoch (\d+)/(\d+): loss (\S+) accuracy (\S+) val_loss (\S+) "
                   r"val_accuracy (\S+) \(\d+\.\d s\)$")
TRIAL = re.compile(r"^\[sweep tiny\] trial (\d+)/(\d+) \((\S+)\): val_accuracy=")


def counts(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in COUNT.findall(re.sub(r"\x1b\[[0-9;]*m", "", text))]


@pytest.mark.slow
def test_default_sweep_output_in_a_pipe_is_one_line_per_epoch_and_per_trial(store):
    exp = write_yaml(store / "tiny.yaml", f"""# mnist-exp sweep tiny.yaml
name: tiny
search_space: {ROOT / "search_spaces" / "small.yaml"}
data: {{source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}}
training: {{epochs: 2}}
tuner: {{kind: random, max_trials: 2}}
""")
    proc = cli("sweep", exp, check=0)  # stdout is a pipe
    out = proc.stdout
    for chatter in ("Search: Running Trial", "Best Value So Far", "Hyperparameter", "Complete [", "So Far:",
                    "Epoch 1/2", "Reloading Tuner"):
        assert chatter not in out, chatter
    assert "\r" not in out and "\x1b" not in out and "\b" not in out  # no bar redraws in a log file
    assert all(n <= m for n, m in counts(out)), out
    assert "oneDNN" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr

    lines = out.splitlines()
    epochs = [EPOCH.match(ln) for ln in lines if " epoch " in ln]
    assert all(epochs), out
    trials = [TRIAL.match(ln) for ln in lines if TRIAL.match(ln)]
    assert [(t[1], t[2]) for t in trials] == [("1", "2"), ("2", "2")], out
    ids = [t[3] for t in trials]
    assert sorted((e[1], e[2], e[3]) for e in epochs) == sorted((i, str(k), "2") for i in ids for k in (1, 2))
    # each trial's epoch lines come before its trial line, and say what MLflow recorded for that epoch
    where = {ln: i for i, ln in enumerate(lines)}
    for t in trials:
        assert all(where[e.string] < where[t.string] for e in epochs if e[1] == t[3])
    from mlflow import MlflowClient

    c = MlflowClient()
    by_trial = {r.data.tags["mnist_exp.trial_id"]: r.info.run_id for r in runs(filter_string="tags.`mnist_exp.kind` = 'trial'")}
    for e in epochs:
        history = {m.step: m.value for m in c.get_metric_history(by_trial[e[1]], "val_accuracy")}
        assert f"{history[int(e[2])]:.4f}" == e[7]


def _fit_with_bar(bar_cls, capsys, steps_per_execution=8, batches=22, epochs=2):
    """Keras's bar or ours through a real fit and predict; returns (printed text, [(step shown, total)])."""
    import keras

    class Recorded(bar_cls):  # the step each update shows: printing is throttled (50 ms), this is not
        shown = []

        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            self.shown.append((self.seen, self.target))

        def on_predict_batch_end(self, batch, logs=None):
            super().on_predict_batch_end(batch, logs)
            self.shown.append((self.seen, self.target))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", steps_per_execution=steps_per_execution)
    x = np.random.rand(batches * 8 - 3, 4).astype("float32")  # the last batch is partial: still `batches` steps
    y = keras.utils.to_categorical(np.arange(len(x)) % 3, 3)
    capsys.readouterr()
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=1, validation_data=(x[:20], y[:20]), callbacks=[Recorded()])
    model.predict(x[:5], verbose=1, callbacks=[Recorded()])  # one batch, 8 steps per execution
    return capsys.readouterr().out, Recorded.shown


def test_progress_bar_never_counts_past_its_end_with_steps_per_execution(capsys):
    import keras

    from mnist_exp.model.training import ProgressBar

    # Keras 3.15's own bar: the cause (end step = begin + steps_per_execution - 1, not clipped to the epoch)
    _, keras_shown = _fit_with_bar(keras.callbacks.ProgbarLogger, capsys)
    assert (24, 22) in keras_shown and (8, 1) in keras_shown, f"Keras fixed its bar, ProgressBar may go: {keras_shown}"

    printed, shown = _fit_with_bar(ProgressBar, capsys)
    assert shown == [(8, 22), (16, 22), (22, 22)] * 2 + [(1, 1)]  # once per execution, up to each total
    assert counts(printed) and all(n <= m for n, m in counts(printed)), printed
    assert counts(printed).count((22, 22)) >= 2 and (1, 1) in counts(printed)


def test_verbose_draws_bars_on_a_terminal_and_keras_epoch_lines_in_a_pipe(monkeypatch):
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            monkeypatch.setattr("sys.stdout", tty)
            assert terminal.fit_verbose(True) == 1 and terminal.fit_verbose(False) == 0
        r, w = os.pipe()
        with os.fdopen(r) as _, os.fdopen(w, "w") as pipe:
            monkeypatch.setattr("sys.stdout", pipe)
            assert terminal.fit_verbose(True) == 2 and terminal.fit_verbose(False) == 0
    finally:
        os.close(master)
