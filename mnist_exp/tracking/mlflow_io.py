"""The one place that talks to MLflow.

Runs are addressed by id, never by process-local state beyond the fluent "active
run" of the run being trained, so a trial can run in any process that knows the
sweep's parent run id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

from mnist_exp._version import __version__
from mnist_exp.tracking import keys, store


def tracking_uri() -> str:
    """The store ``configure`` pointed MLflow at."""
    import mlflow

    return mlflow.get_tracking_uri()


def configure(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created if missing)."""
    import logging

    import mlflow

    # MLflow logs every SQL error with its traceback before raising it; we handle what it raises.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    store.prepare(uri, write=True, experiment=experiment)  # before MLflow opens it: created once, atomically

    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(experiment, artifact_location=store.artifact_root(uri))
    except Exception:  # created by a racing process
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


@lru_cache(maxsize=4)
def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def client(uri: str | None = None):
    import mlflow

    return _client(uri or mlflow.get_tracking_uri())


def environment_tags() -> dict[str, str]:
    import keras
    import mlflow
    import tensorflow as tf

    tags = {
        keys.TAG_VERSION: __version__,
        keys.TAG_TENSORFLOW: tf.__version__,
        keys.TAG_KERAS: keras.__version__,
        keys.TAG_MLFLOW: mlflow.__version__,
    }
    commit = git_commit()
    if commit:
        tags[keys.TAG_GIT_COMMIT] = commit
    return tags


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def log_params(params: dict) -> None:
    log_params_to(active_run_id(), params)


def log_params_to(run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    client().log_batch(run_id, params=[Param(k, _param_str(v)) for k, v in params.items()])


def _param_str(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def log_metrics(metrics: dict, step: int | None = None, run_id: str | None = None) -> None:
    """Log metrics by run id through the client: safe from callbacks deep-copied by Keras Tuner."""
    from mlflow.entities import Metric

    run_id = run_id or active_run_id()
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
    client().log_batch(run_id, metrics=batch)


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def set_tags(tags: dict, run_id: str | None = None) -> None:
    from mlflow.entities import RunTag

    client().log_batch(run_id or active_run_id(), tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_figure(fig, artifact_file: str, run_id: str | None = None) -> None:
    import matplotlib.pyplot as plt

    try:
        client().log_figure(run_id or active_run_id(), fig, artifact_file, save_kwargs={"dpi": 100})
    finally:
        plt.close(fig)


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    client().log_text(run_id or active_run_id(), text, artifact_file)


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    client().log_artifact(run_id or active_run_id(), str(path), artifact_path)


def log_dataset(ds, run_id: str | None = None) -> None:
    """Log train (with validation) and test sets as MLflow dataset inputs, digest = our sha256."""
    import warnings

    import mlflow
    import numpy as np
    from mlflow.entities import DatasetInput, InputTag

    name = Path(ds.source).stem if ds.source not in ("embedded", "mnist") else f"mnist-{ds.source}"
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    train = mlflow.data.from_numpy(
        np.concatenate([ds.x_train, ds.x_val]),
        targets=np.concatenate([ds.y_train, ds.y_val]),
        source=ds.source_uri,
        name=f"{name}-train",
        digest=ds.fingerprint[:16],
    )
    test = mlflow.data.from_numpy(
        ds.x_test, targets=ds.y_test, source=ds.source_uri, name=f"{name}-test", digest=ds.test_fingerprint[:16]
    )
    inputs = [
        DatasetInput(d._to_mlflow_entity(), [InputTag("mlflow.data.context", ctx), InputTag("fingerprint", fp)])
        for d, ctx, fp in ((train, "training", ds.fingerprint), (test, "testing", ds.test_fingerprint))
    ]
    rid = run_id or active_run_id()
    client().log_inputs(rid, datasets=inputs)
    set_tags({keys.TAG_FINGERPRINT: ds.fingerprint, keys.TAG_TEST_FINGERPRINT: ds.test_fingerprint}, run_id=rid)


def log_keras_model(model, x_example, y_example=None) -> str:
    """Log the model in MLflow's Keras flavor with a signature and input example; returns its URI."""
    from importlib.metadata import PackageNotFoundError, version

    import mlflow
    from mlflow.models import infer_signature

    reqs = []
    for dist in ("tensorflow-cpu", "tensorflow", "keras"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pass
    y_example = model.predict(x_example, verbose=0) if y_example is None else y_example
    signature = infer_signature(x_example, y_example)
    # Model.log is what mlflow.keras.log_model calls; _KerasFlavor only works around its save_model
    # writing input_example.json before creating the model folder (MLflow 3.17).
    # Explicit requirements skip MLflow's requirement inference, which reloads the model in a subprocess.
    # validate_serving_input=False skips reloading the model to predict the example (seconds a trial);
    # tests/results/test_serve.py checks a logged model against a real `mlflow models serve` instead.
    info = mlflow.models.Model.log(
        artifact_path=None, name="model", flavor=_KerasFlavor, flavor_name="mlflow.keras", model=model,
        signature=signature, input_example=x_example, pip_requirements=reqs, validate_serving_input=False,
    )
    set_tags({keys.TAG_MODEL_URI: info.model_uri})
    return info.model_uri


class _KerasFlavor:
    @staticmethod
    def save_model(path, **kwargs):
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        kwargs.pop("validate_serving_input", None)  # read by Model.log, unknown to save_model
        return mlflow.keras.save_model(path=path, **kwargs)


# --- sweeps: parent runs, addressed by tag so any process can find them --------------------------


def find_runs(experiment_ids: list[str], filter_string: str, max_results: int = 50000):
    from mlflow.entities import ViewType

    return client().search_runs(
        experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY, max_results=max_results
    )


def delete_tag(run_id: str, key: str) -> None:
    client().delete_tag(run_id, key)


def get_run(run_id: str):
    return client().get_run(run_id)


# --- the registry ---------------------------------------------------------------------------------

# What mlflow.register_model prints to stderr on success: mnist-exp says what it registered in its own words.
_REGISTRATION_CHATTER = ("Successfully registered model ", "Registered model ", "Created version ")


def register_model(model_uri: str, name: str, tags: dict):
    """``mlflow.register_model`` (a new version of ``name`` from ``model_uri``, its ``tags`` in the same request),
    without MLflow's own lines about it on stderr; any other line it prints still reaches stderr."""
    import contextlib
    import io

    import mlflow

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return mlflow.register_model(model_uri, name, tags=tags)
    finally:
        rest = [ln for ln in said.getvalue().splitlines(keepends=True) if not ln.startswith(_REGISTRATION_CHATTER)]
        sys.stderr.write("".join(rest))
