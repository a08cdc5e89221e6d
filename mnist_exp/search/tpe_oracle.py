"""``tuner.kind: tpe``: Optuna's TPE sampler behind Keras Tuner's ``Oracle`` interface.

Keras Tuner asks ``populate_space`` for each new trial; the answer here is the proposal of an Optuna
``TPESampler`` over a study rebuilt from the oracle's own trials (finished ones with their scores, pruned ones with
their per-epoch objective), so the chief, workers, leases, budget, refit and resume work as for the other kinds,
and a resumed sweep (or a chief on another machine) proposes what the first one would have: the study is derived
from the trial files, never kept. The sampler's seed is the sweep's seed and the number of trials so far, so the
same seed and history give the same proposal. Conditional hyperparameters are asked only when active (Optuna's
define-by-run API, multivariate TPE with its group decomposition). A warm-started sweep's observations (earlier
sweeps' trials on the same digits with the same objective, ``warm_start.py``) join the study as finished trials.
"""

from __future__ import annotations

import math
import warnings

import keras_tuner as kt
from keras_tuner.src.engine import hyperparameters as hp_module

_RUNNING, _STOPPED = kt.engine.trial.TrialStatus.RUNNING, kt.engine.trial.TrialStatus.STOPPED
MAX_COLLISIONS = 20  # proposals already tried before the oracle says the space is exhausted (as Keras Tuner's)


def startup_trials(max_trials: int) -> int:
    """Random trials before TPE models the results: Optuna's 10, fewer for short sweeps (a third of them, >= 2)."""
    return max(2, min(10, max_trials // 3))


class TPEOracle(kt.Oracle):
    """Keras Tuner oracle proposing with Optuna's TPESampler (``pruned``: trial id -> epoch, set by the sweep's
    oracle mixin when a pruner runs); ``observations``: {"values": {...}, "score": float} learnt from first."""

    def __init__(self, *args, observations=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.observations = [dict(o) for o in observations]

    def populate_space(self, trial_id):
        # Keras Tuner's create_trial has checked max_trials already.
        for attempt in range(MAX_COLLISIONS):
            values = self._propose(attempt)
            key = self._compute_values_hash(values)
            if key not in self._tried_so_far:
                self._tried_so_far.add(key)
                return {"status": _RUNNING, "values": values}
        return {"status": _STOPPED, "values": None}

    def _propose(self, attempt: int) -> dict:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        n = len(self.trials)
        seed = ((self.seed or 0) * 1_000_003 + n * 7919 + attempt) % 2**32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, group
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(self.max_trials),
                                                 multivariate=True, group=True)
        direction = "maximize" if self.objective.direction == "max" else "minimize"
        study = optuna.create_study(direction=direction, sampler=sampler)
        for frozen in self._history(optuna):
            study.add_trial(frozen)
        ask = study.ask()
        hps = hp_module.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if not hps.is_active(hp):
                continue
            dist = distribution(hp)
            if dist is None:
                hps.values[hp.name] = hp.value
            elif isinstance(dist, optuna.distributions.CategoricalDistribution):
                hps.values[hp.name] = ask.suggest_categorical(hp.name, dist.choices)
            else:
                hps.values[hp.name] = from_optuna(hp, ask.suggest_float(hp.name, dist.low, dist.high))
        return hps.values

    def _history(self, optuna):
        """The finished trials as Optuna trials: COMPLETE with their score, PRUNED with their epochs."""
        out = []
        for o in self.observations:
            hps = self.hyperparameters.copy()
            hps.values.update(o["values"])
            params, dists = self._params(hps)
            out.append(optuna.trial.create_trial(params=params, distributions=dists, value=float(o["score"])))
        pruned = getattr(self, "pruned", {})
        for trial_id in self.end_order:
            t = self.trials.get(trial_id)
            if t is None or t.status != "COMPLETED" or t.score is None or not math.isfinite(t.score):
                continue
            params, dists = self._params(t.hyperparameters)
            if trial_id in pruned and t.metrics.exists(self.objective.name):
                steps = {int(o.step): sum(o.value) / len(o.value) for o in t.metrics.get_history(self.objective.name)}
                out.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                     state=optuna.trial.TrialState.PRUNED,
                                                     intermediate_values=steps))
            else:
                out.append(optuna.trial.create_trial(params=params, distributions=dists, value=float(t.score)))
        return out

    def _params(self, hps) -> tuple[dict, dict]:
        """The active, sampled values of ``hps`` in Optuna's coordinates, and their distributions."""
        params, dists = {}, {}
        for hp in self.hyperparameters.space:
            dist = distribution(hp)
            if dist is not None and hp.name in hps.values and hps.is_active(hp):
                params[hp.name] = to_optuna(hp, hps.values[hp.name])
                dists[hp.name] = dist
        return params, dists


def distribution(hp):
    """The Optuna distribution of a Keras Tuner hyperparameter; None for a Fixed one (nothing to sample).

    Numbers are sampled in Keras Tuner's own [0, 1] coordinate (``value_to_prob`` / ``prob_to_value``, what its
    Bayesian oracle models), so log sampling and steps are Keras Tuner's exactly; choices as categories."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(hp, hp_module.Fixed):
        return None
    if isinstance(hp, hp_module.Choice):
        return CategoricalDistribution(list(hp.values))
    if isinstance(hp, hp_module.Boolean):
        return CategoricalDistribution([False, True])
    if isinstance(hp, (hp_module.Int, hp_module.Float)):
        return FloatDistribution(0.0, 1.0)
    raise TypeError(f"no Optuna distribution for {type(hp).__name__} {hp.name}")


def to_optuna(hp, value):
    """A Keras Tuner value in the coordinate of ``distribution(hp)``."""
    if isinstance(hp, (hp_module.Int, hp_module.Float)):
        return min(max(float(hp.value_to_prob(value)), 0.0), 1.0)
    return value


def from_optuna(hp, value):
    """An Optuna proposal as the Keras Tuner value."""
    if isinstance(hp, (hp_module.Int, hp_module.Float)):
        return hp.prob_to_value(value)
    return value
