"""The Python API (mnist_exp.api, exported lazily by the package): a notebook's sweep, leaderboard, promotion and
prediction, with run ids and data frames back; bad input raises before anything is written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import TINY_SWEEP, runs, write_yaml


def test_importing_the_package_loads_nothing_heavy():
    probe = ("import sys, mnist_exp; f = mnist_exp.compare; "
             "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


@pytest.mark.slow
def test_a_notebook_sweeps_compares_promotes_and_predicts(store, embedded):
    import mnist_exp
    from mlflow import MlflowClient

    result = mnist_exp.sweep(write_yaml(store / "tiny.yaml", TINY_SWEEP), name="nb")
    assert (result.name, result.completed, result.failed) == ("nb", 2, 0)
    [parent] = runs(filter_string="tags.`mnist_exp.sweep` = 'nb' and tags.`mnist_exp.kind` = 'sweep'")
    assert parent.info.run_id == result.parent_run_id

    trials = mnist_exp.compare(["nb"])
    stored = {r.info.run_id for r in runs(filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")}
    assert set(trials["run_id"]) == stored and len(stored) == 2
    assert trials["objective"].notna().all() and set(trials["sweep"]) == {"nb"}
    best = trials.loc[trials["objective"].idxmax()]
    assert best["trial_id"] == result.best_trial_id

    promoted = mnist_exp.promote("nb")
    assert (promoted.run_id, promoted.version, promoted.model_uri) == (best["run_id"], "1", "models:/mnist-cnn@champion")
    assert MlflowClient().get_model_version_by_alias("mnist-cnn", "champion").run_id == promoted.run_id

    digit = embedded["x_test"][0]
    Image.fromarray(digit).save(store / "digit.png")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(store / "blank.png")
    answers = mnist_exp.predict([store / "digit.png", store / "blank.png"])
    assert list(answers["digit_found"]) == [True, False]
    first = answers.iloc[0]
    assert first["label"] == int(np.argmax(first["probabilities"])) and 0 <= first["label"] <= 9
    assert first["probability"] == max(first["probabilities"]) and abs(sum(first["probabilities"]) - 1) < 1e-4


def test_bad_input_raises_before_anything_is_written(tmp_path, monkeypatch):
    import mnist_exp
    from mnist_exp.runtime.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="tuner.max_trials"):
        mnist_exp.sweep(write_yaml(tmp_path / "tiny.yaml", TINY_SWEEP), overrides=["tuner.max_trials=0"])
    with pytest.raises(ConfigError, match="--name"):
        mnist_exp.sweep(tmp_path / "tiny.yaml", name="no/slashes")
    assert not (tmp_path / "mlruns").exists()
