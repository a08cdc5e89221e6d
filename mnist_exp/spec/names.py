"""One rule for every name a user gives: sweep names, registered model names and aliases.

A sweep name becomes a folder (``mlruns/tuner/<name>``), a run name (``<name>-<trial_id>``) and a
tag; a model name and an alias end up in MLflow's registry and in its filter strings. The rule
that fits all of them: 1-100 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter
or a digit. So no ``.``/``..``, no separators, whitespace, control characters or quotes, and the
name (plus a trial id) stays far below the 255-byte file-name limit and MLflow's 250-character
run-name column. MLflow's aliases are stricter still: no ``.``, and not ``latest`` or ``v<N>``.
"""

from __future__ import annotations

import re

from mnist_exp.runtime.errors import ConfigError

MAX_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # MLflow's alias pattern is [\w-]: no dots
RULE = f"a non-empty name of at most {MAX_LENGTH} ASCII letters, digits, '.', '_' or '-', starting with a letter or a digit"


def fault(value, kind: str = "name") -> str | None:
    """Why ``value`` is not a valid ``kind`` ("name" or "alias"), or None when it is."""
    if not isinstance(value, str):
        return f"must be {RULE} (got {show(value)})"
    if len(value) > MAX_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_LENGTH} (got {show(value)})"
    if kind == "alias":
        if not _ALIAS.fullmatch(value):
            return (f"must be a non-empty name of at most {MAX_LENGTH} ASCII letters, digits, '_' or '-' (no '.'), "
                    f"starting with a letter or a digit (got {show(value)})")
        if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
            return f"{value!r} is reserved by MLflow's model registry"
        return None
    if not _NAME.fullmatch(value):
        return f"must be {RULE} (got {show(value)})"
    return None


def check(value, where: str, key: str | None = "name", kind: str = "name") -> str:
    """``value`` if valid, else ConfigError ``<where>: <key>: <fault>`` (one line; a flag as ``where``
    needs no key: ``--name: must be ...``)."""
    why = fault(value, kind)
    if why:
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{why}")
    return value


def show(value) -> str:
    """A one-line, bounded rendering of a bad value (repr escapes newlines and control characters)."""
    return shorten(repr(value))


def shorten(text: str) -> str:
    """``text`` on one line (control characters escaped) and at most about 60 characters."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 60 else f"{text[:45]}...{text[-10:]}"
