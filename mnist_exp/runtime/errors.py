"""The error hierarchy the CLI maps to exit codes.

Bad input (ConfigError, DataError, StoreError, a held sweep lock) exits 2 before any MLflow write;
a sweep in which nothing succeeded (SweepError), a refused promotion, or a tracking server that
went away mid-sweep (TrackingUnavailable, finished trials kept) exits 1.
"""


class MnistExpError(Exception):
    exit_code = 1


class ConfigError(MnistExpError):
    """An experiment or search-space file, a --set override or a command-line value is invalid."""

    exit_code = 2


class DataError(MnistExpError):
    """A data source is missing, malformed or cannot be reached."""

    exit_code = 2


class StoreError(MnistExpError):
    """The tracking store cannot be used: unreachable, unreadable, read-only, half-migrated."""

    exit_code = 2


class SweepLocked(MnistExpError):
    """Another live process holds the sweep (one sweep of a name at a time)."""

    exit_code = 2


class TrackingUnavailable(MnistExpError):
    """The tracking store went away mid-command for longer than the retries cover."""

    exit_code = 1


class DiskFull(MnistExpError):
    """No space left where the store, artifacts or tuner state are written; finished work is kept."""

    exit_code = 1


class SweepError(MnistExpError):
    """A sweep produced no finished trial."""

    exit_code = 1


class PromotionRefused(MnistExpError):
    """The candidate is not at least as good as the current champion."""

    exit_code = 1


class PermissionRefused(MnistExpError):
    """The tracking server's auth app does not let the signed-in user do this (a grant is missing)."""

    exit_code = 1
