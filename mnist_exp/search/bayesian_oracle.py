"""``tuner.kind: bayesian``: Keras Tuner's Gaussian-process oracle, also learning from earlier sweeps' trials.

A warm-started sweep (``warm_start.py``) may bring observations: configurations and scores of trials that ran
on the same digits with the same objective. They join the oracle's own finished trials in the vectors its
Gaussian process is fitted to (Keras Tuner's own embedding in [0, 1]), and shorten the random start by as many
(at least one trial of its own comes first). They are not trials of this sweep: nothing runs, nothing is logged.
"""

from __future__ import annotations

import keras_tuner as kt
import numpy as np


class BayesianOracle(kt.oracles.BayesianOptimizationOracle):
    def __init__(self, *args, observations=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.observations = [dict(o) for o in observations]  # {"values": {...}, "score": float}
        if self.observations:
            start = self.num_initial_points or max(3 * len(self.hyperparameters.space), 3)
            self.num_initial_points = max(1, start - len(self.observations))

    def _vectorize_trials(self):
        x, y = super()._vectorize_trials()
        if not self.observations:
            return x, y
        rows, scores = [], []
        for o in self.observations:
            hps = self.hyperparameters.copy()
            hps.values.update(o["values"])
            rows.append([hp.value_to_prob(hps.values[hp.name] if hp.name in o["values"] and hps.is_active(hp)
                                          else hp.default) for hp in self._nonfixed_space()])
            scores.append(-o["score"] if self.objective.direction == "max" else o["score"])  # minimised
        x = np.concatenate([x.reshape(-1, len(rows[0])), np.array(rows)]) if len(x) else np.array(rows)
        return x, np.concatenate([y, np.array(scores)])
