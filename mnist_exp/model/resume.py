"""A fit that resumes from its last completed epoch: the per-epoch checkpoint and what it takes to continue.

At the end of every completed epoch ``EpochCheckpoint`` writes the fit's whole state to the run in the tracking
store (``tracking/checkpoints.py``: a versioned folder, then the pointer): the model's weights with the
optimizer's state (its step, so a schedule's position, and its learning rate), the dropout layers' random
state, the data order's seed, the epoch, the history so far and the counters of the callbacks that carry
state across epochs (early stopping, plateau). With an objective it also keeps the best epoch's version, so a
trial resumed elsewhere still evaluates its best epoch. The next invocation that runs the same fit
(``identity``: hyperparameters, data, seed, epochs) finds the run, reopens it and continues from there.

The epoch a Ctrl-C cut short never reaches this callback (``training.StopOnSignal`` raises first), and an epoch
whose loss is not finite is never saved: a checkpoint is always a whole, sound epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from mnist_exp.runtime import faults
from mnist_exp.tracking import checkpoints

STATE_FILE, WEIGHTS_FILE = "state.json", "state.weights.h5"
CALLBACK_COUNTERS = ("wait", "best", "best_epoch", "cooldown_counter")  # EarlyStopping, ReduceLROnPlateau


def identity(hp_values: dict, fingerprint: str, seed: int, epochs: int, extra: dict | None = None) -> str:
    """What a checkpoint must match to be resumed: a different value anywhere means another fit."""
    text = json.dumps({"hp": hp_values, "data": fingerprint, "seed": seed, "epochs": epochs, **(extra or {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


MACHINE_LOCAL = ("data.source", "training.threads")  # where this machine keeps the digits, its thread count


def fit_settings(exp) -> dict:
    """The experiment's settings that make a fit what it is: not where a machine keeps the digits (their
    fingerprint counts) nor its thread count, so another worker can continue a trial."""
    return {k: v for k, v in exp.as_params().items() if k not in MACHINE_LOCAL}


def version_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


@dataclass(frozen=True)
class Resume:
    """A checkpoint found, checked and downloaded: where the fit continues from."""

    run_id: str
    epoch: int  # epochs completed (the last completed epoch, 1-based)
    history: dict  # metric -> one value per completed epoch
    data_seed: int
    state: dict  # the rest of state.json: callback counters, random state
    weights: Path  # the state at ``epoch``
    best_weights: Path | None = None  # the best epoch's weights, where an objective was given
    best_epoch: int | None = None


class Damaged(Exception):
    """A checkpoint that cannot be used; its message is the one line the user sees."""


def load(run_id: str, pointer: checkpoints.Pointer, want_identity: str) -> Resume:
    """Download and check the pointed version (and the best epoch's); raise Damaged (or a mismatch) if unusable."""
    folder = checkpoints.download(run_id, pointer.version)
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        epoch, history, data_seed = int(state["epoch"]), dict(state["history"]), int(state["data_seed"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Damaged(f"unreadable state ({type(e).__name__})") from e
    if state.get("identity") != want_identity:
        raise Damaged("it was made for other hyperparameters or data")
    _check_h5(folder / WEIGHTS_FILE)
    best_epoch, best = state.get("best_epoch"), None
    if best_epoch is not None:
        best_version = version_name(int(best_epoch))
        best_folder = folder if best_version == pointer.version else checkpoints.download(run_id, best_version)
        best = best_folder / WEIGHTS_FILE
        _check_h5(best)
    return Resume(run_id, epoch, history, data_seed, state, folder / WEIGHTS_FILE, best, best_epoch)


def _check_h5(path: Path) -> None:
    """Every dataset of the weights file reads back (a truncated or corrupted file does not)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    except Exception as e:
        raise Damaged(f"weights unreadable ({type(e).__name__})") from e


def seed_generators(model) -> list:
    """The model's random generators (dropout's), in a fixed order: their state is not among the weights."""
    return [sg for layer in model._flatten_layers() for sg in getattr(layer, "_seed_generators", [])]


class EpochCheckpoint(keras.callbacks.Callback):
    """Checkpoint every completed epoch to ``run_id`` (and restore ``resume`` when the fit begins).

    Args:
        run_id: the run the checkpoint belongs to.
        identity: ``identity(...)`` of the fit.
        data_seed: the seed of the data order (``training.input_pipeline``); a resumed fit keeps its own.
        objective: (metric, "max"|"min") whose best epoch is kept too, or None.
        resume: where to continue from, or None for a fit from the start.
        stop_after: train no epoch past this one (1-based), whatever the fit's ``epochs``.
    """

    def __init__(self, run_id: str, identity: str, data_seed: int, objective: tuple[str, str] | None = None,
                 resume: Resume | None = None, stop_after: int | None = None):
        super().__init__()
        self.run_id, self.identity, self.objective, self.resume = run_id, identity, objective, resume
        self.stop_after = stop_after  # the fit ends after this epoch (a resumed trial its pruner had already stopped)
        self.data_seed = resume.data_seed if resume else data_seed
        self.history = {k: list(v) for k, v in resume.history.items()} if resume else {}
        self.tracked: list = []  # callbacks whose counters are part of the state
        self._restored = False

    def track(self, callback) -> None:
        """Keep ``callback``'s epoch counters (patience waits, best values) with each checkpoint."""
        self.tracked.append(callback)

    @property
    def initial_epoch(self) -> int:
        return self.resume.epoch if self.resume else 0

    def on_train_begin(self, logs=None):
        if self.resume is None:
            return
        model = self.model
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(self.resume.weights))
        for sg, value in zip(seed_generators(model), self.resume.state.get("rng", []), strict=False):
            sg.state.assign(np.asarray(value, dtype=sg.state.dtype))

    def on_epoch_begin(self, epoch, logs=None):
        if self.resume is not None and not self._restored:  # after the tracked callbacks' own on_train_begin resets
            for cb, counters in zip(self.tracked, self.resume.state.get("callbacks", []), strict=False):
                for name, value in counters.items():
                    setattr(cb, name, value)
        self._restored = True

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        if not math.isfinite(logs.get("loss", 0.0)):
            return  # the fit fails on it (training.FailOnNaN): nothing to resume from
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)
        done = epoch + 1
        best = self.best_epoch()
        state = {"identity": self.identity, "epoch": done, "history": self.history, "data_seed": self.data_seed,
                 "best_epoch": best, "rng": [np.asarray(sg.state.numpy()).tolist() for sg in seed_generators(self.model)],
                 "callbacks": [{n: _plain(getattr(cb, n)) for n in CALLBACK_COUNTERS if hasattr(cb, n)}
                               for cb in self.tracked]}
        from mnist_exp import tracking

        tracking.check_held(self.run_id)  # a worker whose trial was given away writes nothing more into it
        folder = Path(tempfile.mkdtemp(prefix="mnist-exp-checkpoint-"))
        try:
            self.model.save_weights(str(folder / WEIGHTS_FILE))
            (folder / STATE_FILE).write_text(json.dumps(state))
            keep = (version_name(best),) if best is not None else ()
            checkpoints.write(self.run_id, version_name(done), folder, keep, meta={"epoch": done})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        faults.point("epoch_checkpointed")

    def best_epoch(self) -> int | None:
        """The best completed epoch (1-based) on the objective, over the whole fit (before a resume too)."""
        if self.objective is None or not self.history.get(self.objective[0]):
            return None
        values = self.history[self.objective[0]]
        pick = max if self.objective[1] == "max" else min
        return values.index(pick(values)) + 1


def _plain(value):
    """A counter as JSON can hold it (Keras keeps some as NumPy scalars, ``best`` may be ±inf)."""
    try:
        return float(value) if isinstance(value, (float, np.floating)) else int(value)
    except (TypeError, ValueError):
        return None


def find(runs: list, want_identity: str, label: str) -> Resume | None:
    """The checkpoint to continue from among ``runs`` (earlier attempts of the same fit), newest first; None
    to start over. A checkpoint that is damaged or was made for another fit is skipped with one line."""
    for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
        found = checkpoints.pointer(run)
        if found is None:
            continue
        epoch = found.meta.get("epoch", "?")
        try:
            return load(run.info.run_id, found, want_identity)
        except Exception as e:
            why = str(e) if isinstance(e, Damaged) else f"unreadable ({type(e).__name__})"
            print(f"{label}: the checkpoint of run {run.info.run_id} (epoch {epoch}) is not used: {why}; "
                  "starting over", flush=True)
            checkpoints.remove(run.info.run_id)  # never used: its run stays KILLED, without it
            return None
    return None


def backfill(run_id: str, found: Resume) -> None:
    """Log the completed epochs' metrics the run lacks: a process killed between writing an epoch's checkpoint
    and logging its metrics left that one epoch out (each epoch's metrics are logged once, never twice)."""
    from mnist_exp import tracking

    client = tracking.client()
    for name, values in found.history.items():
        have = {m.step for m in client.get_metric_history(run_id, name)}
        for step, value in enumerate(values, start=1):
            if step not in have:
                tracking.log_metrics({name: value}, step=step, run_id=run_id)
