"""Training shared by ``train`` and every sweep trial: the HyperModel, callbacks, and
evaluation + logging of a trained model (test metrics, plots, the model itself).

Imports TensorFlow at module level: import this module lazily, inside commands.
"""

from __future__ import annotations

import math
import time
import warnings

import keras
import keras_tuner as kt
import numpy as np

from mnist_exp import tracking
from mnist_exp.tracking import probabilities
from mnist_exp.model import fidelity, plots, resume
from mnist_exp.model.cnn import build_model, plateau_callback
from mnist_exp.model.data import Dataset, one_hot, to_model_inputs
from mnist_exp.runtime import faults, signals
from mnist_exp.runtime.terminal import epoch_line
from mnist_exp.spec.experiment import Experiment, TrainingConfig
from mnist_exp.spec.levers import hp_value

# Keras Tuner's load_model restores weights only; Keras warns that optimizer slots are skipped.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")


class CNNHyperModel(kt.HyperModel):
    """The CNN for Keras Tuner; ``batch_size`` is a hyperparameter, not a fit argument."""

    def __init__(self, steps_per_execution: int = TrainingConfig.steps_per_execution, n_train: int | None = None,
                 mixed_precision: str | None = None, epochs: int = TrainingConfig.epochs):
        super().__init__(name="mnist_cnn")
        self.steps_per_execution = steps_per_execution
        self.n_train = n_train
        self.mixed_precision = mixed_precision
        self.epochs = epochs  # training.epochs; Hyperband's own count wins (fidelity.py)

    def build(self, hp):
        spe, steps = self.steps_per_execution, None
        if self.n_train:  # more steps per call than an epoch has confuses Keras's progress bar
            batch = hp_value(hp, "batch_size")
            spe = max(1, min(spe, math.ceil(self.n_train / batch)))
            steps = fidelity.trial_steps(hp.values, self.epochs, self.n_train, batch)
        return build_model(hp, steps_per_execution=spe, mixed_precision=self.mixed_precision, steps=steps)

    def fit(self, hp, model, x, y=None, validation_data=None, **kwargs):
        """Arrays are fed through ``input_pipeline``; a ready ``tf.data.Dataset`` passes through. With a
        ``resume.EpochCheckpoint`` among the callbacks, the fit continues from its checkpoint (if it has one) and
        returns the history of every epoch, those before the resume included."""
        callbacks = list(kwargs.pop("callbacks", []))
        ckpt = next((c for c in callbacks if isinstance(c, resume.EpochCheckpoint)), None)
        plateau = plateau_callback(keras, hp, "val_loss" if validation_data is not None else "loss")
        if plateau is not None:  # before the checkpoint, which keeps its counters as they are after the epoch
            callbacks.insert(callbacks.index(ckpt) if ckpt else len(callbacks), plateau)
            if ckpt:
                ckpt.track(plateau)
        if ckpt is not None:
            kwargs["initial_epoch"] = max(kwargs.get("initial_epoch", 0), ckpt.initial_epoch)
            if ckpt.stop_after is not None:
                kwargs["epochs"] = min(kwargs.get("epochs", 1), ckpt.stop_after)
        data_seed = ckpt.data_seed if ckpt else new_data_seed()
        if isinstance(x, np.ndarray):
            import tensorflow as tf

            epoch = tf.Variable(kwargs.get("initial_epoch", 0), dtype=tf.int64, trainable=False)
            x, y = input_pipeline(x, y, hp.get("batch_size"), shuffle=kwargs.pop("shuffle", True), seed=data_seed,
                                  epoch=epoch), None
            callbacks.insert(0, EpochOrder(epoch))
            kwargs["shuffle"] = False  # the pipeline reshuffles each epoch; Keras would only warn
        if isinstance(validation_data, tuple) and isinstance(validation_data[0], np.ndarray):
            validation_data = input_pipeline(*validation_data[:2], EVAL_BATCH, shuffle=False)
        history = model.fit(x, y, validation_data=validation_data, callbacks=callbacks, **kwargs)
        if ckpt is None or ckpt.resume is None:
            return history
        whole = keras.callbacks.History()  # the epochs before the resume, then this fit's
        whole.history = {k: [*ckpt.resume.history.get(k, []), *v] for k, v in history.history.items()} \
            if history.history else {k: list(v) for k, v in ckpt.resume.history.items()}
        return whole


EVAL_BATCH = 256  # evaluation only: no effect on the optimisation, ~2x fewer calls than batch 16


def new_data_seed() -> int:
    """The seed of a new fit's data order, drawn from the process's seeded generator (``set_seed_and_threads``)."""
    return int(np.random.randint(0, 2**31 - 1))


def input_pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = True, seed: int = 0,
                   epoch=None):
    """Batches of (x, y), each epoch in its own uniformly shuffled order, as ``fit(x, y, batch_size=…)`` gives, but
    faster here and resumable.

    Keras's own array pipeline (tf.data, autotuned) sometimes stalls on two cores (docs/performance.md); with
    autotuning off none did. This one gathers index batches from in-memory tensors with a fixed prefetch and
    autotuning off. The order of epoch ``e`` is the stateless permutation of (``seed``, ``e``)
    (``tf.random.experimental.index_shuffle``): it does not depend on what ran before in the process, so a fit
    resumed at epoch ``e`` in another process sees the same digits in the same order.

    Args:
        epoch: the epoch whose order an iterator of the dataset yields: an int, or a ``tf.Variable`` read each time
            an iterator starts (Keras starts one per epoch, after ``on_epoch_begin``: ``EpochOrder`` sets it there).
        Same batch size, partial last batch kept: the optimisation is unchanged.
    """
    import tensorflow as tf

    xt, yt, n = tf.constant(x), tf.constant(y), len(x)
    ds = tf.data.Dataset.range(n).batch(batch_size)
    if shuffle:
        def order(i):
            e = epoch.read_value() if isinstance(epoch, tf.Variable) else tf.constant(epoch or 0, tf.int64)
            return tf.random.experimental.index_shuffle(i, tf.stack([tf.constant(seed, tf.int64), e]),
                                                        tf.constant(n - 1, tf.int64))
        ds = ds.map(order)
    ds = ds.map(lambda i: (tf.gather(xt, i), tf.gather(yt, i))).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return ds.with_options(options)


class EpochOrder(keras.callbacks.Callback):
    """Points the input pipeline at the epoch about to run (``input_pipeline``'s ``epoch`` variable)."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class EpochLogger(keras.callbacks.Callback):
    """Logs every epoch's loss/accuracy/val_* to the run, with the epoch as step, and prints the epoch's
    one line (``progress.epoch_line``) after ``echo`` when given: the one per-epoch printer of train,
    sweep and parallel workers.

    Holds only the run id, so Keras Tuner's per-trial deep copy is cheap and safe.
    """

    def __init__(self, run_id: str, echo: str | None = None):
        super().__init__()
        self.run_id = run_id
        self.echo = echo  # the line's prefix, e.g. "[sweep quick] trial 3"
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        lr = _current_lr(self.model)
        seconds = time.perf_counter() - self._t0
        extra = {"learning_rate": lr} if lr is not None else {}
        tracking.log_metrics({**metrics, **extra, "epoch_time_s": seconds}, step=epoch + 1, run_id=self.run_id)
        faults.point("epoch_logged")
        if self.echo:
            print(epoch_line(self.echo, epoch + 1, (self.params or {}).get("epochs"), metrics, seconds), flush=True)


def _current_lr(model) -> float | None:
    """The rate the optimizer used last (a schedule's value at its current step)."""
    try:
        opt = model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)
        lr = opt.learning_rate
        return float(lr(opt.iterations) if callable(lr) else lr)
    except Exception:
        return None


class ProgressBar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar (``--verbose``), never counting past its end.

    Keras 3.15 calls ``on_*_batch_end`` once per execution of ``steps_per_execution`` steps with the
    execution's last step computed as ``begin + steps_per_execution - 1``, never clipped to the epoch
    (trainers/epoch_iterator.py); ProgbarLogger shows that + 1, so 85 batches at 8 per execution end
    at "88/85", and a one-batch predict shows "8/1". Here the step is clipped to the bar's target.
    """

    def _clip(self, batch):
        return batch if not self.target else min(batch, self.target - 1)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(self._clip(batch), logs)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(self._clip(batch), logs)

    def on_predict_batch_end(self, batch, logs=None):
        super().on_predict_batch_end(self._clip(batch), logs)


class NaNLoss(RuntimeError):
    pass


class FailOnNaN(keras.callbacks.Callback):
    """Raise (so the trial ends FAILED) instead of Keras's TerminateOnNaN silent stop. Checked at the epoch's end,
    on the epoch's mean loss (NaN once any step's was): no per-step hook, so no per-step sync or Python call."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NaNLoss(f"loss became {float(loss)} in epoch {epoch + 1}")


class StopOnSignal(keras.callbacks.Callback):
    """A Ctrl-C / SIGTERM recorded during the fit (``runtime/signals.py``) asks Keras to stop at the next step
    boundary (``stop_training``; ``stop_evaluating`` during validation): no per-step Python work.

    Put first among the fit's callbacks: at the end of the epoch the signal cut short it raises the interrupt
    before any other callback sees that partial epoch, so it is never logged or checkpointed as a whole one.
    """

    def on_train_begin(self, logs=None):
        signals.stop_hook(self._stop)

    def on_train_end(self, logs=None):
        signals.stop_hook(None)

    def _stop(self):
        self.model.stop_training = True
        self.model.stop_evaluating = True

    def on_test_begin(self, logs=None):
        if signals.pending():  # Keras resets stop_evaluating when validation begins
            self.model.stop_evaluating = True

    def on_epoch_end(self, epoch, logs=None):
        signals.check()


def set_seed_and_threads(exp: Experiment) -> None:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices: each trial builds a new model on purpose
    if exp.training.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(exp.training.threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, exp.training.threads))
        except RuntimeError:  # already initialised in this process; keep what it has
            pass
    keras.utils.set_random_seed(exp.seed)


def fit_arrays(ds: Dataset):
    """(x_train, y_train, validation_data) as float32 / one-hot, the seed's input form."""
    val = (to_model_inputs(ds.x_val), one_hot(ds.y_val)) if len(ds.y_val) else None
    return to_model_inputs(ds.x_train), one_hot(ds.y_train), val


def hypermodel_for(exp: Experiment, n_train: int) -> CNNHyperModel:
    return CNNHyperModel(exp.training.steps_per_execution, n_train, exp.training.mixed_precision, exp.training.epochs)


def callbacks_for(exp: Experiment, run_id: str, echo: str | None = None, fit_verbose: int = 0,
                  checkpoint: resume.EpochCheckpoint | None = None) -> list:
    """The fit's callbacks, in the order their epoch ends must run.

    Args:
        echo: the per-epoch line's prefix (None: no line).
        fit_verbose: the fit's verbosity; nonzero adds our ProgressBar (Keras would otherwise add its own, which
            counts past the end).
        checkpoint: the fit's per-epoch checkpoint, if it keeps one: after the callbacks whose counters it saves,
            before the epoch's metrics are logged (a resume logs what a kill between the two left out).
    """
    cbs = [StopOnSignal()]  # first: a partial epoch reaches no other callback
    if fit_verbose:
        cbs.append(ProgressBar())
    if exp.training.early_stopping_patience:
        stop = keras.callbacks.EarlyStopping(monitor=exp.objective.name, mode=exp.objective.direction,
                                             patience=exp.training.early_stopping_patience)
        cbs.append(stop)
        if checkpoint is not None:
            checkpoint.track(stop)
    if checkpoint is not None:
        cbs.append(checkpoint)
    return [*cbs, EpochLogger(run_id, echo), FailOnNaN()]


def history_summary(history: dict, objective: str, direction: str) -> dict:
    """Best/final values and epochs run, logged as single metrics so leaderboards need no history."""
    out = {"epochs_run": len(history.get("loss", []))}
    for name in ("val_accuracy", "val_loss", "accuracy", "loss"):
        vals = history.get(name)
        if vals:
            best = max(vals) if name.endswith("accuracy") else min(vals)
            out[f"best_{name}"] = best
            out[f"final_{name}"] = vals[-1]
    if history.get(objective):
        vals = history[objective]
        out["objective"] = max(vals) if direction == "max" else min(vals)
    return out


def evaluate_and_log(model, ds: Dataset, history: dict, first_epoch: int = 1, keep_probabilities: bool = False) -> dict:
    """Test metrics, the four figures and the model, logged to the active run. Returns test metrics.

    The test predictions run in a thread while this one logs the model and the learning curves (TensorFlow
    releases the GIL; MLflow's fluent calls need the run's own thread). With ``keep_probabilities`` the
    validation digits go through the same pass and both sets of class probabilities are logged
    (``PROBABILITIES``): what an ensemble's members are chosen and scored by.
    """
    from concurrent.futures import ThreadPoolExecutor

    x_test = to_model_inputs(ds.x_test)
    x_val = to_model_inputs(ds.x_val) if keep_probabilities and len(ds.y_val) else x_test[:0]
    x_all = np.concatenate([x_val, x_test]) if len(x_val) else x_test
    with ThreadPoolExecutor(1, thread_name_prefix="test-predictions") as pool:
        predicted = pool.submit(model.predict, x_all, batch_size=EVAL_BATCH, verbose=0)
        example = np.asarray(model(x_test[:5], training=False))
        tracking.log_keras_model(model, x_test[:5], example)
        tracking.log_figure(plots.learning_curves(history, first_epoch), "plots/learning_curves.png")
        probs_all = predicted.result()
    val_probs, probs = probs_all[: len(x_val)], probs_all[len(x_val):]
    pred = probs.argmax(axis=1)
    metrics = metrics_from_probs(probs, ds.y_test)
    tracking.log_metrics(metrics)
    tracking.log_figure(plots.prediction_grid(ds.x_test, ds.y_test, pred), "plots/predictions.png")
    tracking.log_figure(plots.confusion_matrix(ds.y_test, pred), "plots/confusion_matrix.png")
    tracking.log_figure(plots.mistakes(ds.x_test, ds.y_test, pred, probs.max(axis=1)), "plots/mistakes.png")
    if keep_probabilities:
        probabilities.log({"test": (probs, ds.y_test), **({"validation": (val_probs, ds.y_val)} if len(val_probs) else {})})
    return metrics


def metrics_from_probs(probs: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and categorical cross-entropy from one predict pass (what ``evaluate`` computes,
    with Keras's clipping at 1e-7), so the test set is run through the model once, not twice."""
    p = np.clip(probs[np.arange(len(y)), y].astype(np.float64), 1e-7, 1 - 1e-7)
    return {"test_loss": float(-np.log(p).mean()), "test_accuracy": float((probs.argmax(axis=1) == y).mean())}


def merged_history(histories) -> dict:
    """Keras Tuner returns one History per execution; curves come from the last one."""
    h = histories[-1] if isinstance(histories, (list, tuple)) else histories
    h = getattr(h, "history", h)
    return {k: [float(x) for x in v] for k, v in h.items() if k != "learning_rate"}


def model_size(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
