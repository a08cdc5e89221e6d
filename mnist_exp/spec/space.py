"""Search spaces (search_spaces/*.yaml) validated as data, then turned into Keras Tuner HyperParameters.

Format::

    hyperparameters:
      learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log, default: 1.0e-3}
      filters_1:     {type: int, min: 32, max: 192, step: 32, default: 128}
      activation:    {type: choice, values: [relu, elu], default: relu}
      batch_norm:    {type: boolean, default: false}
      batch_size:    {type: fixed, value: 16}
      warmup_fraction: {type: float, min: 0.0, max: 0.2, step: 0.05, default: 0.0, when: {lr_schedule: [cosine]}}

``when`` makes a hyperparameter conditional (Keras Tuner's conditional scopes): it is sampled, logged and used
only while each named parent (declared above it, pinned by the experiment's ``hp:``, or at the seed's value)
takes one of the listed values; otherwise the model uses the seed's value.

Validation needs no TensorFlow: a bad file fails before anything heavy loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from mnist_exp.runtime.errors import ConfigError
from mnist_exp.spec import limits, yaml_file
from mnist_exp.spec.levers import HP_DEFAULTS, KERNEL_SIZES, value_fault

KEYS = {
    "int": {"type", "min", "max", "step", "sampling", "default", "when"},
    "float": {"type", "min", "max", "step", "sampling", "default", "when"},
    "choice": {"type", "values", "default", "when"},
    "boolean": {"type", "default", "when"},
    "fixed": {"type", "value"},
}
SAMPLINGS = ("linear", "log", "reverse_log")
DISCRETE = {"kernel_size": ", ".join(map(str, KERNEL_SIZES))}  # a range would sample sizes the model refuses


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    sampling: str = "linear"
    values: tuple = ()
    default: object = None
    when: tuple = ()  # ((parent, (value, ...)), ...): active only while every parent takes one of its values

    def can_take(self, v) -> bool:
        """Whether this hyperparameter can ever take ``v``."""
        if self.type == "fixed":
            return v == self.default
        if self.type == "boolean":
            return isinstance(v, bool)
        if self.type == "choice":
            return v in self.values
        if not self.min <= v <= self.max:
            return False
        return self.step is None or math.isclose((v - self.min) / self.step, round((v - self.min) / self.step))


@dataclass(frozen=True)
class SearchSpace:
    path: str
    params: tuple[Param, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def check_conditions(self, fixed: dict) -> None:
        """Raise ConfigError for a ``when`` no trial can meet: a parent value that the parent never takes (as the
        space declares it, as the experiment's ``hp:`` pins it, or at the seed's value)."""
        declared = {p.name: p for p in self.params}
        for p in self.params:
            if p.name in fixed:  # pinned: its condition does not apply
                continue
            for parent, values in p.when:
                if parent in fixed:
                    takes, how = Param(parent, "fixed", default=fixed[parent]), "pinned by hp: to"
                elif parent in declared:
                    takes, how = declared[parent], "declared as"
                else:
                    takes, how = Param(parent, "fixed", default=HP_DEFAULTS[parent][1]), "not searched: the seed's"
                never = [v for v in values if not takes.can_take(v)]
                if never:
                    shown = takes.default if takes.type == "fixed" else takes.values or takes.type
                    raise ConfigError(f"{self.path}: hyperparameters.{p.name}.when.{parent}: {parent} never takes "
                                      f"{', '.join(map(repr, never))} ({how} {shown!r})")

    def to_hyperparameters(self, fixed: dict | None = None):
        """Keras Tuner HyperParameters; ``fixed`` pins names (from the experiment's hp: section)."""
        import keras_tuner as kt

        hp = kt.HyperParameters()
        fixed = fixed or {}
        for name, value in fixed.items():
            hp.Fixed(name, value)
        parents = {parent for p in self.params for parent, _ in p.when} - set(fixed) - set(self.names)
        for name in sorted(parents):  # a parent nobody searches or pins: the seed's value
            hp.Fixed(name, HP_DEFAULTS[name][1])
        for p in self.params:
            if p.name in fixed:
                continue
            with contextlib.ExitStack() as scopes:
                for parent, values in p.when:
                    scopes.enter_context(hp.conditional_scope(parent, list(values)))
                _register(hp, p)
        return hp

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


def load_space(path: str | Path | None) -> SearchSpace:
    """Load and validate a search space; ``None`` gives the empty space (the baseline, fixed)."""
    if path is None:
        return SearchSpace(path="<none>", params=())
    path = Path(path)
    raw = yaml_file.read(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with the key hyperparameters")
    for key in raw:
        if key != "hyperparameters":
            raise ConfigError(f"{path}: {key}: unknown key (known: hyperparameters)")
    entries = raw.get("hyperparameters") or {}
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: hyperparameters: must be a non-empty mapping of name -> spec")
    params: list[Param] = []
    for name, spec in entries.items():
        param = _param(path, name, spec)
        if isinstance(spec, dict) and "when" in spec:
            param = dataclasses.replace(param, when=_when(path, name, spec["when"], [p.name for p in params],
                                                          list(entries)))
        params.append(param)
    return SearchSpace(str(path), tuple(params))


def _when(path: Path, name: str, when, above: list[str], declared: list[str]) -> tuple:
    """``when: {parent: value or [values], ...}`` checked: known parents, declared above the child if at all."""
    key = f"hyperparameters.{name}.when"
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{path}: {key}: must be a mapping of parent hyperparameter -> value or list of values")
    out = []
    for parent, values in when.items():
        if parent not in HP_DEFAULTS or parent == name:
            raise ConfigError(f"{path}: {key}.{parent}: not a hyperparameter {name} can depend on "
                              f"(known: {', '.join(n for n in HP_DEFAULTS if n != name)})")
        if parent in declared and parent not in above:
            raise ConfigError(f"{path}: {key}.{parent}: declare {parent} above {name}")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{path}: {key}.{parent}: must name at least one value")
        for v in values:
            _check_value(path, f"{key}.{parent}", parent, v)
        out.append((parent, tuple(values)))
    return tuple(out)


def _register(hp, p: Param) -> None:
    if p.type == "int":
        hp.Int(p.name, p.min, p.max, step=p.step, sampling=p.sampling, default=p.default)
    elif p.type == "float":
        hp.Float(p.name, p.min, p.max, step=p.step, sampling=p.sampling, default=p.default)
    elif p.type == "choice":
        hp.Choice(p.name, list(p.values), default=p.default)
    elif p.type == "boolean":
        hp.Boolean(p.name, default=p.default)
    else:
        hp.Fixed(p.name, p.default)


def validate_fixed(values: dict, where: str) -> None:
    """Check an experiment's ``hp:`` values (or --set hp.x=...) against the model's hyperparameters."""
    for name, value in values.items():
        key = f"hp.{name}"
        if name not in HP_DEFAULTS:
            raise ConfigError(f"{where}: {key}: the model has no such hyperparameter (known: {', '.join(HP_DEFAULTS)})")
        _check_value(where, key, name, value)


def _param(path: Path, name: str, spec) -> Param:
    key = f"hyperparameters.{name}"

    def bad(msg, sub=None):
        raise ConfigError(f"{path}: {key}{'.' + sub if sub else ''}: {msg}")

    if name not in HP_DEFAULTS:
        bad(f"the model has no such hyperparameter (known: {', '.join(HP_DEFAULTS)})")
    if not isinstance(spec, dict):
        bad("must be a mapping with a type (int, float, choice, boolean, fixed)")
    kind = spec.get("type")
    if kind not in KEYS:
        bad(f"must be one of {', '.join(KEYS)} (got {kind!r})", "type")
    for k in spec:
        if k not in KEYS[kind]:
            bad(f"unknown key for type {kind} (known: {', '.join(sorted(KEYS[kind]))})", k)
    if kind == "fixed":
        if "value" not in spec:
            bad("a fixed hyperparameter needs a value", "value")
        _check_value(path, f"{key}.value", name, spec["value"])
        return Param(name, "fixed", default=spec["value"])
    if kind == "boolean":
        if HP_DEFAULTS[name][0] is not bool:
            bad(f"{name} is {HP_DEFAULTS[name][0].__name__}, not boolean", "type")
        default = spec.get("default", HP_DEFAULTS[name][1])
        _check_value(path, f"{key}.default", name, default)
        return Param(name, "boolean", default=default)
    if kind == "choice":
        return _choice(path, key, name, spec, bad)
    return _range(path, key, name, kind, spec, bad)


def _choice(path: Path, key: str, name: str, spec: dict, bad) -> Param:
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        bad("must be a non-empty list", "values")
    if len(set(map(repr, values))) != len(values):
        bad("has duplicates", "values")
    for v in values:
        _check_value(path, f"{key}.values", name, v)
    default = spec.get("default", values[0])
    if default not in values:
        bad(f"{default!r} is not one of the values {values}", "default")
    return Param(name, "choice", values=tuple(values), default=default)


def _range(path: Path, key: str, name: str, kind: str, spec: dict, bad) -> Param:
    """An int or float range: bounds, sampling, step and default checked against the lever."""
    py_type = HP_DEFAULTS[name][0]
    if name in DISCRETE:
        bad(f"{name} takes only {DISCRETE[name]}: declare it as a choice", "type")
    if (kind == "int") != (py_type is int) or py_type not in (int, float):
        bad(f"{name} is {py_type.__name__}; a {kind} range does not fit it", "type")
    for k in ("min", "max"):
        if k not in spec:
            bad(f"a {kind} range needs {k}", k)
        _check_number(path, f"{key}.{k}", kind, spec[k])
    lo, hi = spec["min"], spec["max"]
    _check_value(path, f"{key}.min", name, lo)
    _check_value(path, f"{key}.max", name, hi)
    if lo > hi:
        bad(f"min {lo} > max {hi}", "min")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        bad(f"must be one of {', '.join(SAMPLINGS)} (got {sampling!r})", "sampling")
    if sampling != "linear" and lo <= 0:
        bad(f"{sampling} sampling needs min > 0 (got {lo})", "min")
    step = spec.get("step")
    if step is not None:
        _check_number(path, f"{key}.step", kind, step)
        if step <= 0:
            bad(f"must be > 0 (got {step})", "step")
    default = spec.get("default", HP_DEFAULTS[name][1])
    _check_number(path, f"{key}.default", kind, default)
    if not lo <= default <= hi:
        bad(f"{default} is outside [{lo}, {hi}]", "default")
    cast = int if kind == "int" else float
    return Param(name, kind, cast(lo), cast(hi), None if step is None else cast(step), sampling, (), cast(default))


def _check_number(path, key, kind, v) -> None:
    ok = isinstance(v, int) if kind == "int" else isinstance(v, (int, float))
    if not ok or isinstance(v, bool):
        raise ConfigError(f"{path}: {key}: must be {'an integer' if kind == 'int' else 'a number'} (got {v!r})")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{path}: {key}: must be a finite number (got {v})")


def _check_value(where, key, name, v) -> None:
    py_type = HP_DEFAULTS[name][0]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) if py_type is float else isinstance(v, py_type)
    if py_type is int and isinstance(v, bool):
        ok = False
    if not ok:
        raise ConfigError(f"{where}: {key}: {name} needs a {py_type.__name__} (got {v!r})")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{where}: {key}: must be a finite number (got {v})")
    if limits.over(name, v):
        raise ConfigError(f"{where}: {key}: {limits.over(name, v)}")
    if fault := value_fault(name, v):
        raise ConfigError(f"{where}: {key}: {fault}")
    if py_type is int and v < 1:
        raise ConfigError(f"{where}: {key}: must be at least 1 (got {v})")
