"""A sweep's state file, ``<store>/tuner/<sweep>/mnist_exp_sweep.json``: what resumes the sweep, and the
sweep's identity (what a resume must leave unchanged).

Formats (the ``"format"`` key):

- 1 (no key; mnist-exp 0.1.0): each section hashed from ``dataclasses.asdict``, so any new config field
  changed every sweep's hash. Read by hashing the fields format 1 knew (:data:`FORMAT1_FIELDS`, frozen
  here) the old way; a field added since must be at its default. Rewritten as the current format on the
  first resume (:func:`write`, atomically); mnist-exp 0.1.0 cannot read it after that.
- 2: each section hashed from a canonical form that leaves out every field at its default, so a field
  added later with a default that keeps the old behaviour changes no existing sweep's hash. The other
  side of that: changing an existing field's default would silently change what resumed sweeps run, so
  a release that does so must bump :data:`FORMAT` (and read the older format with the old default).

A format newer than :data:`FORMAT` is refused in one line, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

from mnist_exp._version import __version__
from mnist_exp.model.fidelity import decided_by_tuner
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.tracking import store

FORMAT = 2
STATE_FILE = "mnist_exp_sweep.json"

# Left out of the identity: raising max_trials extends a sweep, and any number of workers may resume it.
NOT_IDENTITY = {"tuner": ("max_trials", "parallel_trials", "budget", "refit", "warm_start", "ensemble")}

# The fields each section had when format 1 was current (mnist-exp 0.1.0): data, never to be edited.
FORMAT1_FIELDS = {
    "search space": ("name", "type", "min", "max", "step", "sampling", "values", "default"),
    "tuner": ("kind", "executions_per_trial", "max_epochs", "factor", "hyperband_iterations",
              "max_consecutive_failed_trials"),
    "objective": ("name", "direction"),
    "data": ("source", "train_size", "test_size", "validation_split"),
    "training": ("epochs", "steps_per_execution", "early_stopping_patience", "threads", "mixed_precision"),
}


def tuner_dir(uri: str) -> Path:
    return store.local_store_dir(uri) / "tuner"


def state_path(uri: str, name: str) -> Path:
    return tuner_dir(uri) / name / STATE_FILE


def atomic_write_json(path: str | Path, obj) -> None:
    """Write by rename: a reader (or a process killed mid-write) sees the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- identity -----------------------------------------------------------------------------------------


def _sections(exp, space) -> dict:
    """The declared sections, as objects: a dataclass, a list of them, or a plain value."""
    return {
        "search space": list(space.params),
        "tuner": exp.tuner,
        "objective": exp.objective,
        "fixed hyperparameters (hp)": exp.hp,
        "data": exp.data,
        "training": exp.training,
        "seed": exp.seed,
    }


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _norm(v):
    """One spelling per value: 1.0 and 1 alike, tuples as lists, mappings with sorted keys (json)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    return v


def canonical(obj, skip: tuple = ()):
    """A dataclass as {field: value} without the fields at their default (or in ``skip``); lists of
    dataclasses item by item; other values normalised."""
    if isinstance(obj, list):
        return [canonical(x, skip) for x in obj]
    if not dataclasses.is_dataclass(obj):
        return _norm(obj)
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name in skip or _same(v, _default(f)):
            continue
        out[f.name] = _norm(v)
    return out


def _same(v, default) -> bool:
    """``v`` is the field's default (a field without one never is). True is not 1 here."""
    if default is dataclasses.MISSING:
        return False
    if isinstance(v, bool) or isinstance(default, bool):
        return type(v) is type(default) and v == default
    return _norm(v) == _norm(default)


def identity(exp, space, epochs_decided_by_tuner: bool | None = None) -> dict[str, str]:
    """Per-section hashes of the current format. Under Hyperband, training.epochs is not the trials'
    length (fidelity.py) and is left out (0.3.0 and earlier hashed it: ``epochs_decided_by_tuner=False``)."""
    skips = dict(NOT_IDENTITY)
    if decided_by_tuner(exp.tuner.kind) if epochs_decided_by_tuner is None else epochs_decided_by_tuner:
        skips["training"] = ("epochs",)
    return {k: _hash(canonical(v, skips.get(k, ()))) for k, v in _sections(exp, space).items()}


def identity_format1(exp, space) -> tuple[dict[str, str], list[str]]:
    """(per-section hashes as format 1 computed them over its own fields, the sections that set a field
    format 1 did not have to something other than its default: those differ from any format-1 sweep)."""
    hashes, newer = {}, []
    for section, value in _sections(exp, space).items():
        known = FORMAT1_FIELDS.get(section)
        if known is None:  # hp, seed: plain values, hashed as they are
            hashes[section] = _hash(value)
            continue
        skip = NOT_IDENTITY.get(section, ())
        items = value if isinstance(value, list) else [value]
        old = []
        for obj in items:
            for f in dataclasses.fields(obj):
                if f.name not in known and f.name not in skip and not _same(getattr(obj, f.name), _default(f)):
                    newer.append(section)
            old.append({k: v for k, v in dataclasses.asdict(obj).items() if k in known})
        hashes[section] = _hash(old if isinstance(value, list) else old[0])
    return hashes, sorted(set(newer), key=list(hashes).index)


def changed_sections(state: dict, exp, space) -> list[str]:
    """The sections of ``exp`` and ``space`` that differ from the sweep ``state`` records, in order."""
    if state["format"] == 1:
        ident, newer = identity_format1(exp, space)
    else:
        ident, newer = identity(exp, space), []
    recorded = state.get("identity") or {}
    changed = [k for k, v in ident.items() if recorded.get(k) != v or k in newer]
    if changed == ["training"] and state["format"] != 1:  # a Hyperband sweep 0.3.0 hashed with its epochs
        if identity(exp, space, epochs_decided_by_tuner=False)["training"] == recorded.get("training"):
            return []
    return changed


# --- the file -----------------------------------------------------------------------------------------


def read(path: Path) -> dict | None:
    """The state at ``path`` (None when there is none), with ``"format"`` set (1 when absent). A file this
    package cannot read is one line (ConfigError), before anything is written."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable sweep state ({type(e).__name__}: {str(e)[:200]}); "
                          "use --overwrite or a new --name") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a sweep state (a JSON object expected); use --overwrite or a new --name")
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ConfigError(f"{path}: format: must be a positive integer (got {str(fmt)[:50]!r})")
    if fmt > FORMAT:
        raise ConfigError(f"{path}: sweep state format {fmt} was written by a newer mnist-exp (mnist-exp "
                          f"{__version__} reads formats 1 to {FORMAT}); upgrade mnist-exp")
    for key in ("parent_run_id", "identity"):
        if key not in state:
            raise ConfigError(f"{path}: {key}: missing from the sweep state; use --overwrite or a new --name")
    return {**state, "format": fmt}


def write(path: Path, exp, ds, parent: str, experiment_id: str, ident: dict, created, warm_start=None) -> None:
    """Everything a worker in another process needs, with the parent run id: the experiment as
    run (after --set), and the data fingerprint to check that it loaded the same digits; and what a warm-started
    sweep begins with (``warm_start``: its ``to_state()``, warm_start.py), chosen once."""
    atomic_write_json(path, {"format": FORMAT, "name": exp.name, "parent_run_id": parent,
                             "experiment_id": experiment_id, "identity": ident, "created": created,
                             "experiment": dataclasses.asdict(exp), "data_fingerprint": ds.fingerprint,
                             "written_by": __version__, **(warm_start or {})})
