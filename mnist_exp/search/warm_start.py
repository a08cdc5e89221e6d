"""Warm start (``tuner.warm_start`` / ``--warm-start A,B``): a new sweep's first trials are the best
configurations of earlier sweeps that fit its space, trained again on its data and counted as its own trials.

Model-based oracles (Bayesian, TPE) also learn from the earlier sweeps' finished, unpruned trials as
observations (configuration and score) when those sweeps ran on the same training and test digits (their
fingerprints) with the same objective; a sweep that differs is named with the reason, and only its best
configurations are used.

Both are chosen once, when the sweep is created, from the earlier sweeps' trials ranked by their objective (when it
is the new sweep's), and kept in the sweep's state file: a resumed sweep, or a chief on another machine, proposes
the same ones whatever the store holds by then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mnist_exp.results import compare, importance
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.spec import names as names_mod
from mnist_exp.spec.experiment import Experiment
from mnist_exp.spec.space import SearchSpace
from mnist_exp.tracking import keys

MODEL_BASED = ("bayesian", "tpe")  # the kinds that learn from observations


@dataclass(frozen=True)
class WarmStart:
    configs: list = field(default_factory=list)  # the first trials' configurations (searched hyperparameters)
    observations: list = field(default_factory=list)  # {"values": {...}, "score": float}, earlier results

    def to_state(self) -> dict:
        return {"warm_start": self.configs, "warm_observations": self.observations}

    @classmethod
    def from_state(cls, state: dict) -> WarmStart:
        return cls(list(state.get("warm_start") or []), list(state.get("warm_observations") or []))


def sweep_names(exp: Experiment) -> list[str]:
    return [n.strip() for n in (exp.tuner.warm_start or "").split(",") if n.strip()]


def how_many(exp: Experiment) -> int:
    """At most a quarter of the trials (1 to 10) start from earlier configurations; the rest search."""
    return max(1, min(10, exp.tuner.max_trials // 4))


def choose(exp: Experiment, space: SearchSpace, uri: str, fingerprints: tuple[str, str]) -> WarmStart:
    """What the new sweep starts from; ConfigError for a sweep the store does not have. ``fingerprints``: the new
    sweep's (training + validation, test). Prints one line saying what was taken and what was not."""
    wanted = sweep_names(exp)
    found = compare.load_trials(uri, exp.mlflow_experiment, wanted)
    if found.missing:
        raise ConfigError(f"{exp.path}: tuner.warm_start: no sweep named "
                          f"{', '.join(names_mod.shorten(m) for m in found.missing)} in {uri}")
    searched = [p for p in space.params if p.type != "fixed" and p.name not in exp.hp]
    rows, observed, skipped, unobserved = [], [], [], []
    for name in wanted:
        objective, maximize = found.objectives.get(name, ("val_accuracy", True))
        if objective != exp.objective.name or maximize != (exp.objective.direction == "max"):
            skipped.append(f"{name} (its objective is {objective}, {'max' if maximize else 'min'})")
            continue
        group = found.df[found.df["sweep"] == name] if not found.df.empty else found.df
        usable = importance.usable(group).to_dict("records") if not group.empty else []
        rows += usable
        tags = found.parents[name].data.tags
        if (tags.get(keys.TAG_FINGERPRINT), tags.get(keys.TAG_TEST_FINGERPRINT)) == fingerprints:
            observed += usable
        elif exp.tuner.kind in MODEL_BASED:
            unobserved.append(f"{name} (other training or test digits)")
    rows.sort(key=lambda r: r["objective"], reverse=exp.objective.direction == "max")
    configs = []
    for config in (_fitting(row, searched) for row in rows):
        if config is not None and config not in configs and len(configs) < how_many(exp):
            configs.append(config)
    observations = [{"values": c, "score": float(r["objective"])} for r in observed
                    if (c := _fitting(r, searched)) is not None] if exp.tuner.kind in MODEL_BASED else []
    what = f"{len(configs)} configuration(s) first"
    if exp.tuner.kind in MODEL_BASED:
        what += f", {len(observations)} earlier trial(s) as observations"
    why = "".join(f"; not used{k}: {', '.join(v)}" for k, v in (("", skipped), (" as observations", unobserved)) if v)
    print(f"sweep {exp.name}: warm start from {', '.join(wanted)}: {what}{why}", flush=True)
    return WarmStart(configs, observations)


def _fitting(row: dict, searched) -> dict | None:
    """The row's values of the searched hyperparameters, if every one it has fits the new space (one it lacks,
    or an inactive conditional one, takes the space's default)."""
    config = {}
    for p in searched:
        v = row.get(p.name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if p.type == "int" and isinstance(v, float) and v.is_integer():
            v = int(v)
        if not p.can_take(v):
            return None
        config[p.name] = v
    return config
