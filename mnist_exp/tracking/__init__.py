"""Tracking: the one layer that talks to MLflow.

Owns the store (where it is, its safe creation: ``store``), every key written to it (``keys``), reading and
writing runs (``mlflow_io``, ``readers``, ``runs``), no zombie runs (``liveness``), what a run costs
(``usage``), locks kept in the model registry (``registry_lock``, ``sweep_lock``), resumable checkpoints
(``checkpoints``), a model's kept class probabilities (``probabilities``) and the UI's saved view
(``ui_view``). Imports ``spec`` and ``runtime`` only; MLflow itself is imported inside functions, so that
``mnist-exp --help`` stays instant.

The functions other packages call are re-exported here: ``from mnist_exp import tracking`` then
``tracking.start_run(...)``, ``tracking.set_tags(...)``.
"""

from mnist_exp.tracking.mlflow_io import (
    active_run_id,
    client,
    configure,
    delete_tag,
    environment_tags,
    find_runs,
    get_run,
    log_artifact,
    log_dataset,
    log_figure,
    log_keras_model,
    log_metrics,
    log_params,
    log_params_to,
    log_text,
    register_model,
    set_tags,
    tracking_uri,
)
from mnist_exp.tracking.runs import (
    RunTakenOver,
    check_held,
    create_run,
    end_run,
    ensemble_runs,
    kill_stale_children,
    let_go,
    refit_runs,
    reopen_run,
    set_status,
    start_run,
    trial_runs,
)

__all__ = [
    "RunTakenOver", "active_run_id", "check_held", "client", "configure", "create_run", "delete_tag", "end_run", "ensemble_runs",
    "environment_tags", "find_runs", "get_run", "kill_stale_children", "let_go", "log_artifact", "log_dataset",
    "log_figure", "log_keras_model", "log_metrics", "log_params", "log_params_to", "log_text", "refit_runs", "register_model",
    "reopen_run", "set_status", "set_tags", "start_run", "tracking_uri", "trial_runs",
]
