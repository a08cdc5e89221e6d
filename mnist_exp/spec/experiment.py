"""Experiment files (experiments/*.yaml) loaded into frozen dataclasses.

Unknown keys are rejected by name, values are type-checked, and every error is
one line naming the file, the key and the fault, e.g.::

    experiments/quick.yaml: tuner.kind: must be one of random, bayesian, hyperband, grid (got 'evolution')
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnist_exp.runtime.errors import ConfigError
from mnist_exp.spec import limits, names, yaml_file
from mnist_exp.spec.durations import parse_duration
from mnist_exp.spec.space import validate_fixed

TUNER_KINDS = ("random", "bayesian", "hyperband", "grid", "tpe")
PRUNER_KINDS = ("none", "median", "asha")  # search/pruners.py
MIN_SPLIT = 10  # digits in each of train, validation and test: at least one per class on average


def validation_count(n_train: int, validation_split: float) -> int:
    """Digits carved for validation from ``n_train`` (at least MIN_SPLIT when there is a split)."""
    return max(MIN_SPLIT, int(round(n_train * validation_split))) if validation_split > 0 else 0


def training_too_small(n_train: int, validation_split: float) -> str:
    n_val = validation_count(n_train, validation_split)
    return (f"{n_train} digits leave {max(0, n_train - n_val)} for training once validation_split {validation_split} "
            f"takes {n_val}; training needs at least {MIN_SPLIT} (use at least {n_val + MIN_SPLIT} digits)")


@dataclass(frozen=True)
class DataConfig:
    source: str = "embedded"  # embedded (3,000 + 1,000 digits in the package) | mnist | a path to an .npz or an IDX folder
    train_size: int | None = None  # stratified subset of the training part; null: all of it
    test_size: int | None = None  # stratified subset of the test part; null: all of it
    validation_split: float = 0.1  # carved from the training part, seeded, stratified


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10  # epochs per trial (under hyperband, the tuner decides each trial's)
    # Batches per call into TensorFlow: fewer round trips, the same optimisation (docs/performance-overview.md).
    steps_per_execution: int = 8
    early_stopping_patience: int | None = None  # stop a trial after this many epochs without a better objective; null: off
    threads: int | None = None  # TensorFlow's threads; null: all cores (parallel workers share them out)
    # null (float32), mixed_float16 (NVIDIA GPUs) or mixed_bfloat16 (CPUs/TPUs with bfloat16 units)
    mixed_precision: str | None = None


@dataclass(frozen=True)
class TunerConfig:
    kind: str = "random"  # the search: random, bayesian (Gaussian process), hyperband, grid or tpe (Optuna's sampler)
    max_trials: int = 10  # trials to run (not hyperband: its brackets decide); raising it extends a sweep
    executions_per_trial: int = 1  # fits per trial, their objective averaged
    max_epochs: int = 10  # hyperband: the most epochs a trial trains
    factor: int = 3  # hyperband: 1/factor of the trials go on to the next round
    hyperband_iterations: int = 1  # hyperband: how many times the whole set of brackets runs
    max_consecutive_failed_trials: int = 3  # the sweep stops after this many failed trials in a row
    # Trials at once, each in a Keras Tuner worker process with a share of the cores. Not part of the
    # sweep's identity: a sweep may be resumed with another number.
    parallel_trials: int = 1
    # Wall-clock limit of one invocation ("2h", "90m", seconds): no trial starts that would not end in
    # it (budget.py). Not part of the identity either.
    budget: str | int | float | None = None
    # After the search, train the best trial's configuration again on every training digit (train and
    # validation) as its own run, tagged as the trial's refit; promote then registers the refit.
    refit: bool = False
    # Stop trials that are clearly behind (search/pruners.py): none, median or asha; not with hyperband, which
    # stops trials itself. No decision before warm-up epochs, nor while fewer than min_trials others reached
    # the epoch; asha keeps the top 1/reduction_factor at each rung.
    pruner: str = "none"
    pruner_warmup_epochs: int = 1  # epochs before the pruner's first decision on a trial
    pruner_min_trials: int = 3  # other trials that must have reached an epoch before a trial is judged there
    pruner_reduction_factor: int = 3  # asha: the top 1/reduction_factor of a rung go on
    # Earlier sweeps ("a,b") whose best configurations that fit the space are the first trials (random, bayesian
    # and tpe; search/warm_start.py). Chosen once, when the sweep is created; not part of its identity.
    warm_start: str | None = None
    # Up to this many finished trials averaged as the sweep's model (results/ensemble.py): every trial keeps its
    # validation and test probabilities to choose them by, and promote registers the ensemble. 0: none (promote
    # registers the best trial). Not part of the identity: promote can build one from any sweep that kept them.
    ensemble: int = 0


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "val_accuracy"  # the metric that ranks trials: val_accuracy, val_loss, accuracy or loss
    direction: str = "max"  # max or min


@dataclass(frozen=True)
class Experiment:
    name: str  # the sweep's name (--name overrides it): its parent run, its state, its lease
    path: str | None = None  # the YAML file it came from
    search_space: str | None = None  # the search space file; a relative path is taken from the experiment file's folder
    mlflow_experiment: str = "mnist-exp"  # the MLflow experiment its runs go to
    seed: int = 42  # seeds the data split, the search and the weights
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    hp: dict = field(default_factory=dict)  # hyperparameters fixed to a value, not searched (docs: reference, hyperparameters)

    def as_params(self) -> dict[str, Any]:
        """Flat run settings for MLflow params: data.train_size, training.epochs, ..."""
        out: dict[str, Any] = {"seed": self.seed}
        for section in ("data", "training"):
            for k, v in dataclasses.asdict(getattr(self, section)).items():
                out[f"{section}.{k}"] = v
        return out


def load_experiment(path: str | Path | None, overrides: list[str] = ()) -> Experiment:
    """Load an experiment file (or the defaults when path is None) and apply --set overrides.

    >>> load_experiment(None, ["training.epochs=1"]).training.epochs
    1
    """
    where = Where(str(path) if path else "<defaults>")
    raw: dict = {}
    if path:
        raw = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item, where)
        where.origin[item.split("=", 1)[0].strip()] = getattr(item, "flag", None) or f"--set {names.shorten(item)}"
    base = Path(path).resolve().parent if path else Path.cwd()
    if "name" not in raw:
        raw["name"] = Path(path).stem if path else "baseline"
    if raw.get("search_space") is not None:
        if not isinstance(raw["search_space"], str):
            raise ConfigError(f"{where('search_space')}: search_space: must be a path string")
        raw["search_space"] = str((base / raw["search_space"]).resolve())
    src = raw.get("data", {}).get("source") if isinstance(raw.get("data"), dict) else None
    if isinstance(src, str) and src not in ("embedded", "mnist") and not Path(src).is_absolute():
        raw["data"]["source"] = str((base / src).resolve())
    exp = _build(Experiment, raw, where, prefix="")
    exp = dataclasses.replace(exp, path=str(path) if path else None)
    _validate(exp, where)

    for name, value in exp.hp.items():
        validate_fixed({name: value}, where(f"hp.{name}"))
    return exp


class Override(str):
    """A ``key=value`` override that came from a flag of its own (``--epochs 3``): errors name the flag."""

    def __new__(cls, item: str, flag: str):
        self = super().__new__(cls, item)
        self.flag = names.shorten(flag)
        return self


class Where(str):
    """The file an experiment came from; ``where(key)`` names the ``--set`` that gave ``key`` instead,
    so an error points at what the user typed: ``--set seed=-1: seed: must be ...``."""

    def __new__(cls, path: str):
        self = super().__new__(cls, path)
        self.origin = {}
        return self

    def __call__(self, key: str) -> str:
        for given, item in reversed(self.origin.items()):
            if key == given or key.startswith(given + ".") or given.startswith(key + "."):
                return item
        return str(self)


def experiment_from_dict(raw: dict, where: str) -> Experiment:
    """An Experiment from ``dataclasses.asdict`` output (a sweep's state file), checked like a YAML file."""
    raw = dict(raw)
    path = raw.pop("path", None)
    exp = dataclasses.replace(_build(Experiment, raw, where, prefix=""), path=path)
    _validate(exp, where)
    return exp


def _read_yaml(path: Path) -> dict:
    data = yaml_file.read(path)
    if data is None or data == {}:  # an empty file would silently sweep the defaults with no search space
        raise ConfigError(f"{path}: the file is empty; an experiment needs at least a search_space "
                          "(see experiments/quick.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    return data


def _apply_override(raw: dict, item: str, where: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {names.shorten(item)}: expected key=value (e.g. training.epochs=3)")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {names.shorten(item)}: {names.show(key.strip())}: not a key (e.g. training.epochs)")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {names.shorten(item)}: {names.show(part)} is not a section")
    node[parts[-1]] = parse_scalar(value)


def parse_scalar(value: str):
    """YAML scalar, except that 3e-4 is a float (YAML 1.1 reads it as a string)."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            pass
    return parsed


def _build(cls, raw, where: str, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(where, prefix.rstrip('.'))}: {prefix.rstrip('.') or 'top level'}: must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields or key == "path":
            known = ", ".join(k for k in fields if k != "path")
            shown = f"{prefix}{names.shorten(str(key))}"
            raise ConfigError(f"{_at(where, prefix + str(key))}: {shown}: unknown key (known: {known})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, where, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, where, f"{prefix}{key}")
    return cls(**kwargs)


def _at(where, key: str) -> str:
    """Where ``key``'s value came from: the file, or the --set that gave it."""
    return where(key) if callable(where) else str(where)


def _check_type(value, hint, where: str, key: str):
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float
                value = math.inf
            if not math.isfinite(value):
                raise ConfigError(f"{_at(where, key)}: {key}: must be a finite number (got {value})")
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, dict) and isinstance(value, t):
            return value
    kinds = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{_at(where, key)}: {key}: must be {kinds} (got {names.show(value)})")


def _validate_tuner(tu: TunerConfig, d: DataConfig, bad) -> None:
    """The tuner section's choices (its counts are checked with the others')."""
    if tu.kind not in TUNER_KINDS:
        bad("tuner.kind", f"must be one of {', '.join(TUNER_KINDS)} (got {tu.kind!r})")
    if tu.pruner not in PRUNER_KINDS:
        bad("tuner.pruner", f"must be one of {', '.join(PRUNER_KINDS)} (got {tu.pruner!r})")
    if tu.pruner != "none" and tu.kind == "hyperband":
        bad("tuner.pruner", "hyperband stops trials itself: use none, or another tuner.kind")
    if tu.warm_start is not None:
        if tu.kind not in ("random", "bayesian", "tpe"):
            bad("tuner.warm_start", f"starts random, bayesian and tpe searches only (tuner.kind is {tu.kind})")
        for name in tu.warm_start.split(","):
            if names.fault(name.strip(), "name"):
                bad("tuner.warm_start", f"{names.show(name.strip())}: {names.fault(name.strip(), 'name')}")
    if tu.pruner_reduction_factor < 2:
        bad("tuner.pruner_reduction_factor", f"must be at least 2 (got {tu.pruner_reduction_factor})")
    if tu.budget is not None:
        try:
            parse_duration(tu.budget)
        except ValueError as e:
            bad("tuner.budget", str(e))
    if tu.refit and d.validation_split == 0:
        bad("tuner.refit", "refits on training + validation digits: needs data.validation_split > 0 (the search "
                           "selects on the validation split)")
    if tu.ensemble < 0:
        bad("tuner.ensemble", f"must be 0 (no ensemble) or more (got {tu.ensemble})")
    if tu.ensemble and d.validation_split == 0:
        bad("tuner.ensemble", "members are chosen on the validation split: needs data.validation_split > 0")
    if tu.factor < 2:
        bad("tuner.factor", f"must be at least 2 (got {tu.factor})")


def _validate(exp: Experiment, where: str) -> None:
    def bad(key, msg):
        raise ConfigError(f"{_at(where, key)}: {key}: {msg}")

    names.check(exp.name, _at(where, "name"))
    if not exp.mlflow_experiment.strip() or len(exp.mlflow_experiment) > 500:  # MLflow's limit
        bad("mlflow_experiment", f"must be a non-empty name of at most 500 characters (got {names.show(exp.mlflow_experiment)})")
    if not 0 <= exp.seed <= limits.MAX_SEED:
        bad("seed", f"must be in 0 .. 2**32 - 1 (got {exp.seed})")
    if exp.search_space and not Path(exp.search_space).is_file():
        bad("search_space", f"file not found: {exp.search_space}")
    d, t, tu, o = exp.data, exp.training, exp.tuner, exp.objective
    for key, v in (("data.train_size", d.train_size), ("data.test_size", d.test_size)):
        if v is not None and v < 10:
            bad(key, f"must be at least 10 (got {v})")
    if not 0.0 <= d.validation_split < 1.0:
        bad("data.validation_split", f"must be in [0, 1) (got {d.validation_split})")
    for key, v in (
        ("training.epochs", t.epochs),
        ("training.steps_per_execution", t.steps_per_execution),
        ("tuner.max_trials", tu.max_trials),
        ("tuner.executions_per_trial", tu.executions_per_trial),
        ("tuner.max_epochs", tu.max_epochs),
        ("tuner.hyperband_iterations", tu.hyperband_iterations),
        ("tuner.max_consecutive_failed_trials", tu.max_consecutive_failed_trials),
        ("tuner.parallel_trials", tu.parallel_trials),
        ("tuner.pruner_warmup_epochs", tu.pruner_warmup_epochs),
        ("tuner.pruner_min_trials", tu.pruner_min_trials),
    ):
        if v < 1:
            bad(key, f"must be at least 1 (got {v})")
    sections = {"data": d, "training": t, "tuner": tu}
    for key in limits.UPPER:
        section, _, attr = key.partition(".")
        if section in sections and limits.over(key, getattr(sections[section], attr)):
            bad(key, limits.over(key, getattr(sections[section], attr)))
    if d.train_size is not None and d.train_size - validation_count(d.train_size, d.validation_split) < MIN_SPLIT:
        bad("data.train_size", training_too_small(d.train_size, d.validation_split))
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        bad("training.early_stopping_patience", "must be at least 1, or null to disable")
    if t.threads is not None and t.threads < 1:
        bad("training.threads", "must be at least 1, or null for all cores")
    if t.mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
        bad("training.mixed_precision", f"must be mixed_float16, mixed_bfloat16 or null (got {t.mixed_precision!r})")
    _validate_tuner(tu, d, bad)
    if o.direction not in ("max", "min"):
        bad("objective.direction", f"must be max or min (got {o.direction!r})")
    valid = ("accuracy", "loss", "val_accuracy", "val_loss")
    if o.name not in valid:
        bad("objective.name", f"must be one of {', '.join(valid)} (got {o.name!r})")
