"""Durations a user writes (``tuner.budget``, ``--budget``): ``2h``, ``90m``, ``1h30m``, ``45s`` or seconds."""

from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value) -> float | None:
    """``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"`` or a number of seconds; None stays None. ValueError else."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*(\d+(\.\d+)?\s*[smhd]\s*)+", value):
        seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", value))
    else:
        raise ValueError(f"must be a duration such as 2h, 90m, 1h30m or a number of seconds (got {value!r})")
    if not seconds > 0:
        raise ValueError(f"must be more than 0 seconds (got {value!r})")
    return seconds
