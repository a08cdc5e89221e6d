"""Reading a test's MLflow store back: runs, and waiting for a subprocess to have created it."""

from __future__ import annotations

import os
import time


def runs(experiment="mnist-exp", filter_string=""):
    from mlflow import MlflowClient

    c = MlflowClient()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000)


def wait_for_store(proc, experiment="mnist-exp", timeout=180) -> None:
    """Block until the subprocess ``proc`` has created the store of MLFLOW_TRACKING_URI and our experiment
    in it. Opening a sqlite store that another process is still creating runs MLflow's migrations twice
    at once (seen in CI: "duplicate column name: step", CircularDependencyError, in either process), so
    the store is polled read-only, without MLflow, until then."""
    from mnist_exp.tracking.readers import SqliteRuns

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else f"exited {proc.returncode}"
        reader = SqliteRuns.open(os.environ["MLFLOW_TRACKING_URI"])
        if reader:
            try:
                if reader.experiment_id(experiment):
                    return
            except Exception:  # locked while the other process writes
                pass
            finally:
                reader.close()
        time.sleep(0.2)
    raise AssertionError(f"the store was not created within {timeout} s")
