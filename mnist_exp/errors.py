"""The error hierarchy the CLI maps to exit codes.

Bad input (ConfigError, DataError) exits 2 before any MLflow write; a sweep in
which nothing succeeded (SweepError) or a refused promotion exits 1.
"""


class MnistExpError(Exception):
    exit_code = 1


class ConfigError(MnistExpError):
    """An experiment or search-space file, or a --set override, is invalid."""

    exit_code = 2


class DataError(MnistExpError):
    """A data source is missing, malformed or cannot be reached."""

    exit_code = 2


class SweepError(MnistExpError):
    """A sweep produced no finished trial."""

    exit_code = 1


class PromotionRefused(MnistExpError):
    """The candidate is not at least as good as the current champion."""

    exit_code = 1
