"""How long a trial trains: the one owner of epochs.

A trial trains ``training.epochs`` unless Keras Tuner's Hyperband decides (``tuner/epochs``,
resuming from ``tuner/initial_epoch``). Schedules, logged params and the sweep's identity all
ask here, so what is logged is what ran.
"""

from __future__ import annotations

import math

EPOCHS_KEY, INITIAL_KEY = "tuner/epochs", "tuner/initial_epoch"


def trial_epochs(hp_values: dict, configured: int) -> tuple[int, int]:
    """(initial_epoch, last epoch) of a trial: Hyperband's when its bookkeeping is in the values."""
    if EPOCHS_KEY in hp_values:
        return int(hp_values.get(INITIAL_KEY, 0)), int(hp_values[EPOCHS_KEY])
    return 0, configured


def trial_steps(hp_values: dict, configured: int, n_fit: int, batch_size: int) -> int:
    """Optimizer steps the trial will take if it runs to its end (a decaying schedule spans them)."""
    first, last = trial_epochs(hp_values, configured)
    return max(1, (last - first) * math.ceil(n_fit / batch_size))


def logged(hp_values: dict, configured: int) -> dict:
    """The params that say how long the trial was meant to train (``epochs_run`` says how long it did)."""
    first, last = trial_epochs(hp_values, configured)
    return {"training.epochs": last, **({"training.initial_epoch": first} if first else {})}


def decided_by_tuner(kind: str) -> bool:
    """True when the tuner, not ``training.epochs``, sets each trial's length (so it is not hashed)."""
    return kind == "hyperband"
