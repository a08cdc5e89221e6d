"""What a trial costs on this machine, timed before a sweep's first trial (a few seconds).

A budgeted sweep must say at its start whether its budget can hold even one trial (``search/budget_plan.py``),
before any trial has ended to learn from. ``trial_cost`` builds the configuration a trial would get by default
on the sweep's own data and times a few training and evaluation steps. It is a lower bound: the tracking around
a trial (params, curves, figures, the model) is not counted, so only a budget that cannot work is refused.
Imports TensorFlow (through ``training``): import it lazily.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import keras

from mnist_exp.model import training
from mnist_exp.model.data import Dataset
from mnist_exp.spec.experiment import Experiment

TRAIN_STEPS, EVAL_STEPS = 16, 2  # timed after one untimed call of each (it traces the step)


@dataclass(frozen=True)
class TrialCost:
    fixed_s: float  # per trial whatever its length: building the model, tracing its steps, the test evaluation
    epoch_s: float  # per epoch: training and validation

    def seconds(self, epochs: int, scale: float = 1.0) -> float:
        """A trial of ``epochs`` epochs on ``scale`` times the training digits."""
        return self.fixed_s + self.epoch_s * epochs * scale


def trial_cost(exp: Experiment, hp, ds: Dataset) -> TrialCost:
    """Time the model of ``hp`` (Keras Tuner HyperParameters, defaults where not pinned) on ``ds``.

    Leaves Keras as it found it for the sweep: its session cleared and the experiment's seed set again."""
    x, y, val = training.fit_arrays(ds)
    batch = int(hp.get("batch_size"))
    t0 = time.perf_counter()
    model = training.hypermodel_for(exp, len(ds.y_train)).build(hp)
    built = time.perf_counter()
    traced_fit = _fit(model, x[:batch], y[:batch], batch)
    step_s = _fit(model, x[: batch * TRAIN_STEPS], y[: batch * TRAIN_STEPS], batch) / TRAIN_STEPS
    xv, yv = val if val is not None else (x, y)
    traced_eval = _evaluate(model, xv[: training.EVAL_BATCH], yv[: training.EVAL_BATCH])
    n_eval = training.EVAL_BATCH * EVAL_STEPS
    eval_s = _evaluate(model, xv[:n_eval], yv[:n_eval]) / max(1, math.ceil(min(n_eval, len(yv)) / training.EVAL_BATCH))
    keras.backend.clear_session()
    training.set_seed_and_threads(exp)

    def batches(n: int, size: int) -> int:
        return math.ceil(n / size)

    epoch_s = batches(len(ds.y_train), batch) * step_s + batches(len(ds.y_val), training.EVAL_BATCH) * eval_s
    fixed_s = ((built - t0) + max(0.0, traced_fit - step_s) + max(0.0, traced_eval - eval_s)
               + batches(len(ds.y_test), training.EVAL_BATCH) * eval_s)
    return TrialCost(fixed_s, epoch_s)


def _fit(model, x, y, batch: int) -> float:
    t = time.perf_counter()
    model.fit(training.input_pipeline(x, y, batch), epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - t


def _evaluate(model, x, y) -> float:
    t = time.perf_counter()
    model.evaluate(training.input_pipeline(x, y, training.EVAL_BATCH, shuffle=False), verbose=0)
    return time.perf_counter() - t
