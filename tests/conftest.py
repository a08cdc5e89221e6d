"""Shared fixtures: a temporary MLflow store, tiny real MNIST slices, and CLI helpers.

Tests train real (tiny) Keras models and write to a real sqlite MLflow store in a temp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = ["--set", "data.train_size=200", "--set", "data.test_size=100", "--epochs", "1"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh project folder with mlruns/; cwd and MLFLOW_TRACKING_URI point at it."""
    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    import mlflow

    mlflow.set_tracking_uri(uri)
    return tmp_path


@pytest.fixture(scope="session")
def embedded():
    from mnist_exp.data import EMBEDDED_PATH

    with np.load(EMBEDDED_PATH) as z:
        return {k: z[k] for k in z.files}


def runs(experiment="mnist-exp", filter_string=""):
    from mlflow import MlflowClient

    c = MlflowClient()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000)


def cli(*args, check=None, timeout=600, env=None):
    """Run the installed console script in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(VENV_BIN / "mnist-exp"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
