"""The one place that talks to MLflow.

Runs are addressed by id, never by process-local state beyond the fluent "active
run" of the run being trained, so a trial can run in any process that knows the
sweep's parent run id.
"""

from __future__ import annotations

import os
import subprocess
import time
from functools import lru_cache
from pathlib import Path

from mnist_exp._version import __version__
from mnist_exp.tracking import store

# Run statuses, named as MLflow names them.
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
TAG_KIND = "mnist_exp.kind"  # train | sweep | trial | refit
TAG_REFIT_OF = "mnist_exp.refit_of"  # a refit run: the trial run whose configuration it trained again
TAG_SWEEP = "mnist_exp.sweep"
TAG_TRIAL = "mnist_exp.trial_id"
TAG_TUNER_ID = "mnist_exp.tuner_id"  # which Keras Tuner worker ran the trial (tuner0 when not parallel)
TAG_MODEL_URI = "mnist_exp.model_uri"
TAG_ERROR = "mnist_exp.error"
TAG_SUPERSEDED = "mnist_exp.superseded"  # why an earlier parent run of a sweep name (and its trials) is history
TAG_FINGERPRINT = "mnist_exp.data_fingerprint"
TAG_TEST_FINGERPRINT = "mnist_exp.test_fingerprint"


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
        "mnist_exp.version": __version__,
        "mnist_exp.tensorflow": tf.__version__,
        "mnist_exp.keras": keras.__version__,
        "mnist_exp.mlflow": mlflow.__version__,
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
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


def start_run(experiment_id: str, name: str, tags: dict, parent_run_id: str | None = None) -> str:
    """Start the active run of this process (nested under parent_run_id when given), with liveness tags
    and a heartbeat (liveness.py), system metrics and the process's own usage (usage.py) until it ends."""
    import mlflow

    from mnist_exp.tracking import liveness, usage

    run = mlflow.start_run(
        experiment_id=experiment_id, run_name=name, tags={**tags, **liveness.identity()}, parent_run_id=parent_run_id,
        nested=bool(parent_run_id), log_system_metrics=False,  # usage.py runs MLflow's sampler, stopped before the end
    )
    liveness.HEARTBEAT.hold(run.info.run_id, mlflow.get_tracking_uri())
    usage.begin(run.info.run_id, mlflow.get_tracking_uri())
    return run.info.run_id


def end_run(status: str) -> None:
    import mlflow

    from mnist_exp.tracking import liveness, usage

    if mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
        liveness.HEARTBEAT.release(run_id)  # no beat written after the end
        try:  # the last system sample and process_cpu_s, process_peak_rss_mb ...: before the run ends
            spent = usage.end(run_id)
            if spent:
                log_metrics(spent, run_id=run_id)
        except Exception:
            if status == FINISHED:  # a FINISHED run has all its metrics; otherwise end it anyway
                raise
        mlflow.end_run(status=status)


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
    set_tags({TAG_FINGERPRINT: ds.fingerprint, TAG_TEST_FINGERPRINT: ds.test_fingerprint}, run_id=rid)


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
    # validate_serving_input=False skips reloading the model to predict the example (1.3 s a trial);
    # tests/test_serve.py checks a logged model against a real `mlflow models serve` instead.
    info = mlflow.models.Model.log(
        artifact_path=None, name="model", flavor=_KerasFlavor, flavor_name="mlflow.keras", model=model,
        signature=signature, input_example=x_example, pip_requirements=reqs, validate_serving_input=False,
    )
    set_tags({TAG_MODEL_URI: info.model_uri})
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


def trial_runs(experiment_id: str, parent_run_id: str, reader=None, trial_id: str | None = None) -> list:
    """A sweep's trial runs (deleted ones excluded), or one trial's attempts, through MLflow unless
    another reader is given."""
    tags = {TAG_KIND: "trial", "mlflow.parentRunId": parent_run_id}
    if trial_id is not None:
        tags[TAG_TRIAL] = trial_id
    from mnist_exp.tracking.readers import MLflowRuns

    return (reader or MLflowRuns()).runs(experiment_id, tags)


def refit_runs(experiment_id: str, parent_run_id: str, trial_run_id: str | None = None, reader=None) -> list:
    """A sweep's refit runs (refit.py), or those of one trial run."""
    tags = {TAG_KIND: "refit", "mlflow.parentRunId": parent_run_id}
    if trial_run_id is not None:
        tags[TAG_REFIT_OF] = trial_run_id
    from mnist_exp.tracking.readers import MLflowRuns

    return (reader or MLflowRuns()).runs(experiment_id, tags)


def delete_tag(run_id: str, key: str) -> None:
    client().delete_tag(run_id, key)


def get_run(run_id: str):
    return client().get_run(run_id)


def create_run(experiment_id: str, name: str, tags: dict) -> str:
    """A RUNNING run held by this process (liveness tags, heartbeat) until set_status ends it."""
    import mlflow

    from mnist_exp.tracking import liveness

    run_id = client().create_run(experiment_id, run_name=name, tags={**tags, **liveness.identity()}).info.run_id
    liveness.HEARTBEAT.hold(run_id, mlflow.get_tracking_uri())
    return run_id


def set_status(run_id: str, status: str) -> None:
    """RUNNING: this process takes the run over (a resumed sweep's parent): its liveness tags, its heartbeat."""
    import mlflow
    from mlflow.entities import RunTag

    from mnist_exp.tracking import liveness

    c = client()
    if status == RUNNING:
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in liveness.identity().items()])
        c.update_run(run_id, status=RUNNING)
        liveness.HEARTBEAT.hold(run_id, mlflow.get_tracking_uri())
    else:
        liveness.HEARTBEAT.release(run_id)
        c.set_terminated(run_id, status=status)


def kill_stale_children(experiment_id: str, parent_run_id: str) -> list[str]:
    """Children left RUNNING by a process that died (kill -9): mark them KILLED."""
    stale = find_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        client().set_tag(run.info.run_id, TAG_ERROR, "the process running this trial died; the trial is retried")
        client().set_terminated(run.info.run_id, status=KILLED)
    return [r.info.run_id for r in stale]
