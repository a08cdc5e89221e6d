"""A model's class probabilities on the validation and test digits, kept with its run.

An ensemble is chosen on its members' validation probabilities and scored on their test probabilities
(``results/ensemble.py``): logging them once per trial, from the evaluation pass that computes them anyway,
lets ``promote`` build an ensemble from any store without the data or the models. Per split, under the
run's ``probabilities/`` artifacts: ``<split>.npy`` (float32, digits x 10, in the dataset's order) and
``<split>_labels.npy`` (the true digits, so that runs are checked to have seen the same ones).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mnist_exp.tracking import keys
from mnist_exp.tracking.mlflow_io import active_run_id, client

SPLITS = ("validation", "test")


def log(splits: dict[str, tuple[np.ndarray, np.ndarray]], run_id: str | None = None) -> None:
    """Write ``{split: (probabilities, labels)}`` to the run (the active one by default)."""
    rid = run_id or active_run_id()
    with tempfile.TemporaryDirectory() as tmp:
        for split, (probs, labels) in splits.items():
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}")
            np.save(Path(tmp) / f"{split}.npy", np.asarray(probs, dtype=np.float32))
            np.save(Path(tmp) / f"{split}_labels.npy", np.asarray(labels, dtype=np.uint8))
        client().log_artifacts(rid, tmp, keys.PROBABILITIES_DIR)


def kept(run_id: str) -> set[str]:
    """The splits whose probabilities (and labels) the run kept."""
    files = {Path(f.path).name for f in client().list_artifacts(run_id, keys.PROBABILITIES_DIR)}
    return {s for s in SPLITS if f"{s}.npy" in files and f"{s}_labels.npy" in files}


def load(run_id: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) the run kept for ``split``; FileNotFoundError when it kept none."""
    if split not in kept(run_id):
        raise FileNotFoundError(f"run {run_id} kept no {split} probabilities ({keys.PROBABILITIES_DIR}/{split}.npy)")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client().download_artifacts(run_id, keys.PROBABILITIES_DIR, tmp))
        return np.load(local / f"{split}.npy"), np.load(local / f"{split}_labels.npy")
