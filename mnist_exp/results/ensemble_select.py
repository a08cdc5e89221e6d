"""Choosing an ensemble's members from their validation probabilities: greedy forward selection with
replacement (Caruana, Niculescu-Mizil, Crew and Ksikes, "Ensemble selection from libraries of models", 2004).

Pure NumPy and given validation data only: nothing here can see a test label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-7  # Keras's clipping in its cross-entropy


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean categorical cross-entropy of ``probs`` (digits x classes) for labels ``y``."""
    p = np.clip(probs[np.arange(len(y)), y].astype(np.float64), EPS, 1 - EPS)
    return float(-np.log(p).mean())


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())


@dataclass(frozen=True)
class Selection:
    """How often each library model was chosen (its weight is count / sum of counts), and the ensemble's
    validation log loss and accuracy with those weights."""

    counts: tuple[int, ...]
    val_loss: float
    val_accuracy: float

    @property
    def members(self) -> list[int]:
        return [i for i, c in enumerate(self.counts) if c]

    def weights(self) -> np.ndarray:
        c = np.asarray(self.counts, dtype=np.float64)
        return c / c.sum()


CRITERIA = ("log_loss", "accuracy")


def _score(probs: np.ndarray, y: np.ndarray, criterion: str) -> tuple[float, ...]:
    """What greedy selection minimises: the log loss; or the error rate, the log loss breaking its ties."""
    loss = log_loss(probs, y)
    return (loss,) if criterion == "log_loss" else (1.0 - accuracy(probs, y), loss)


def greedy(val_probs: list[np.ndarray], y_val: np.ndarray, max_members: int, steps: int,
           criterion: str = "log_loss") -> Selection:
    """Add, ``steps`` times, the library model (repeats allowed; once ``max_members`` different ones are in, only
    those) whose addition gives the best validation score of the mean (``criterion``: lowest log loss, or highest
    accuracy with the log loss breaking ties); keep the best prefix. The log loss by default: on a few thousand
    digits at 99.5% accuracy most candidates tie on accuracy. Ties go to the earlier model in the library (the
    caller orders it by the sweep's objective)."""
    if not val_probs:
        raise ValueError("an empty library")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: one of {CRITERIA}")
    total = np.zeros(val_probs[0].shape, dtype=np.float64)
    counts = [0] * len(val_probs)
    best: tuple[tuple[float, ...], list[int]] | None = None
    worst = (np.inf,) * (1 if criterion == "log_loss" else 2)
    for step in range(1, max(1, steps) + 1):
        full = sum(1 for c in counts if c) >= max_members
        scores = [_score((total + p) / step, y_val, criterion) if counts[i] or not full else worst
                  for i, p in enumerate(val_probs)]
        i = min(range(len(scores)), key=lambda j: scores[j])
        total += val_probs[i]
        counts[i] += 1
        if best is None or _better(scores[i], best[0]):
            best = (scores[i], list(counts))
    assert best is not None
    mean = mean_of(val_probs, best[1])
    return Selection(tuple(best[1]), log_loss(mean, y_val), accuracy(mean, y_val))


def _better(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` below ``b`` by more than rounding: the first component that differs decides."""
    for x, y in zip(a, b):
        if abs(x - y) > 1e-12:
            return x < y
    return False


def mean_of(probs: list[np.ndarray], counts) -> np.ndarray:
    """The weighted mean of ``probs`` with weights proportional to ``counts``."""
    c = np.asarray(counts, dtype=np.float64)
    return sum(w * p.astype(np.float64) for w, p in zip(c / c.sum(), probs) if w)
