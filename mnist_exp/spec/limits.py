"""Upper bounds on every size a user can give, in one table.

They are not tuned to a machine: they only turn an absurd value (``epochs: 1000000000000``,
``filters_1 max: 1e11``) into a one-line error before anything runs, instead of a
process that never ends or dies allocating memory. Raise one here if a real use needs it.
"""

from __future__ import annotations

MAX_SEED = 2**32 - 1  # numpy's and Keras's seeding take 0 .. 2**32 - 1

UPPER: dict[str, int | float] = {
    # experiment keys
    "data.train_size": 10_000_000,
    "data.test_size": 10_000_000,
    "training.epochs": 10_000,
    "training.steps_per_execution": 10_000,
    "training.early_stopping_patience": 10_000,
    "training.threads": 1_024,
    "tuner.max_trials": 100_000,
    "tuner.executions_per_trial": 100,
    "tuner.max_epochs": 10_000,
    "tuner.factor": 100,
    "tuner.hyperband_iterations": 1_000,
    "tuner.max_consecutive_failed_trials": 100_000,
    "tuner.parallel_trials": 256,
    "tuner.ensemble": 100,
    # hyperparameters (experiment hp: values and search-space bounds alike)
    "learning_rate": 10.0,
    "filters_1": 1_024,
    "filters_2": 1_024,
    "filters_3": 1_024,
    "dense_units": 16_384,
    "batch_size": 65_536,
}


def over(key: str, value) -> str | None:
    """The fault if ``value`` exceeds the bound of ``key`` (no bound: None)."""
    bound = UPPER.get(key)
    if bound is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value > bound:
        shown = f"{value:,}"
        if len(shown) > 30:
            shown = f"a {len(str(int(value)))}-digit number"
        return f"must be at most {bound:,} (got {shown})"
    return None
