"""Warm start (``tuner.warm_start`` / ``--warm-start A,B``): a new sweep's first trials are the best
configurations of earlier sweeps that fit its space, trained again on its data and counted as its own trials.

The configurations are chosen once, when the sweep is created, from the earlier sweeps' finished, unpruned trials
ranked by their objective (when it is the new sweep's), and kept in the sweep's state file: a resumed sweep, or
a chief on another machine, proposes the same ones whatever the store holds by then.
"""

from __future__ import annotations

import math

from mnist_exp.results import compare, importance
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.spec import names as names_mod
from mnist_exp.spec.experiment import Experiment
from mnist_exp.spec.space import SearchSpace

def sweep_names(exp: Experiment) -> list[str]:
    return [n.strip() for n in (exp.tuner.warm_start or "").split(",") if n.strip()]


def how_many(exp: Experiment) -> int:
    """At most a quarter of the trials (1 to 10) start from earlier configurations; the rest search."""
    return max(1, min(10, exp.tuner.max_trials // 4))


def choose(exp: Experiment, space: SearchSpace, uri: str) -> list[dict]:
    """The configurations the new sweep starts with (searched hyperparameters only); ConfigError for a sweep the
    store does not have. Prints one line saying what was taken."""
    wanted = sweep_names(exp)
    found = compare.load_trials(uri, exp.mlflow_experiment, wanted)
    if found.missing:
        raise ConfigError(f"{exp.path}: tuner.warm_start: no sweep named "
                          f"{', '.join(names_mod.shorten(m) for m in found.missing)} in {uri}")
    searched = [p for p in space.params if p.type != "fixed" and p.name not in exp.hp]
    rows, skipped = [], []
    for name in wanted:
        objective = found.objectives.get(name, ("val_accuracy", True))[0]
        if objective != exp.objective.name:
            skipped.append(f"{name} (its objective is {objective})")
            continue
        group = found.df[found.df["sweep"] == name] if not found.df.empty else found.df
        rows += importance.usable(group).to_dict("records") if not group.empty else []
    rows.sort(key=lambda r: r["objective"], reverse=exp.objective.direction == "max")
    configs: list[dict] = []
    for row in rows:
        config = _fitting(row, searched)
        if config is not None and config not in configs:
            configs.append(config)
        if len(configs) == how_many(exp):
            break
    why = f"; not used: {', '.join(skipped)}" if skipped else ""
    print(f"sweep {exp.name}: warm start from {', '.join(wanted)}: {len(configs)} configuration(s) first{why}",
          flush=True)
    return configs


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
