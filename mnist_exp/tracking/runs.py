"""A run's life: started or created by this process (with liveness tags and a heartbeat), ended, taken over,
and a sweep's trial and refit runs found again. Built on ``mlflow_io``; liveness and usage ride along."""

from __future__ import annotations

from mnist_exp.tracking import keys, liveness, mlflow_io, usage
from mnist_exp.tracking.readers import MLflowRuns


def start_run(experiment_id: str, name: str, tags: dict, parent_run_id: str | None = None) -> str:
    """Start the active run of this process (nested under parent_run_id when given), with liveness tags
    and a heartbeat (liveness.py), system metrics and the process's own usage (usage.py) until it ends."""
    import mlflow

    run = mlflow.start_run(
        experiment_id=experiment_id, run_name=name, tags={**tags, **liveness.identity()}, parent_run_id=parent_run_id,
        nested=bool(parent_run_id), log_system_metrics=False,  # usage.py runs MLflow's sampler, stopped before the end
    )
    liveness.HEARTBEAT.hold(run.info.run_id, mlflow.get_tracking_uri())
    usage.begin(run.info.run_id, mlflow.get_tracking_uri())
    return run.info.run_id


def reopen_run(run_id: str, tags: dict) -> str:
    """Make an earlier run (KILLED, or RUNNING in a process that lost it) this process's active run again, as
    ``start_run`` starts one: its liveness tags now name this process (so no reaper takes it for the dead
    one's), the old error tag goes, ``tags`` are added."""
    import mlflow

    mlflow.start_run(run_id=run_id, nested=True, log_system_metrics=False)
    mlflow_io.set_tags({**tags, **liveness.identity()}, run_id=run_id)
    try:
        mlflow_io.delete_tag(run_id, keys.TAG_ERROR)
    except Exception:  # it had none
        pass
    liveness.HEARTBEAT.hold(run_id, mlflow.get_tracking_uri())
    usage.begin(run_id, mlflow.get_tracking_uri(), resumed=True)
    return run_id


class RunTakenOver(Exception):
    """Another process reopened the run this process was writing (a worker whose lease expired)."""


def check_held(run_id: str) -> None:
    """Raise RunTakenOver unless this process still holds the run (before writing into it)."""
    if not holds(mlflow_io.get_run(run_id)):
        raise RunTakenOver(f"run {run_id} was taken over by another process")


def let_go(run_id: str) -> None:
    """Stop being the active run's process without writing to it (another process holds it now): no status, no
    last samples, no heartbeat."""
    from mlflow.tracking import fluent

    liveness.HEARTBEAT.release(run_id)
    usage.drop(run_id)
    stack = fluent._active_run_stack.get()  # MLflow has no public "detach": end_run would write a status
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()


def holds(run) -> bool:
    """Whether this process is the one a run's liveness tags name (another may have reopened it since)."""
    mine = liveness.identity()
    return all(run.data.tags.get(k) == mine[k] for k in (keys.TAG_PID, keys.TAG_HOST, keys.TAG_PROC_START))


def end_run(status: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
        liveness.HEARTBEAT.release(run_id)  # no beat written after the end
        try:  # the last system sample and process_cpu_s, process_peak_rss_mb ...: before the run ends
            spent = usage.end(run_id)
            if spent:
                mlflow_io.log_metrics(spent, run_id=run_id)
        except Exception:
            if status == keys.FINISHED:  # a keys.FINISHED run has all its metrics; otherwise end it anyway
                raise
        mlflow.end_run(status=status)


def trial_runs(experiment_id: str, parent_run_id: str, reader=None, trial_id: str | None = None) -> list:
    """A sweep's trial runs (deleted ones excluded), or one trial's attempts, through MLflow unless
    another reader is given."""
    tags = {keys.TAG_KIND: "trial", keys.TAG_PARENT_RUN: parent_run_id}
    if trial_id is not None:
        tags[keys.TAG_TRIAL] = trial_id
    return (reader or MLflowRuns()).runs(experiment_id, tags)


def refit_runs(experiment_id: str, parent_run_id: str, trial_run_id: str | None = None, reader=None) -> list:
    """A sweep's refit runs (refit.py), or those of one trial run."""
    tags = {keys.TAG_KIND: "refit", keys.TAG_PARENT_RUN: parent_run_id}
    if trial_run_id is not None:
        tags[keys.TAG_REFIT_OF] = trial_run_id
    return (reader or MLflowRuns()).runs(experiment_id, tags)


def ensemble_runs(experiment_id: str, parent_run_id: str, identity: str | None = None, reader=None) -> list:
    """A sweep's ensemble runs (results/ensemble.py), or those of one set of members and weights."""
    tags = {keys.TAG_KIND: "ensemble", keys.TAG_PARENT_RUN: parent_run_id}
    if identity is not None:
        tags[keys.TAG_ENSEMBLE_IDENTITY] = identity
    return (reader or MLflowRuns()).runs(experiment_id, tags)


def create_run(experiment_id: str, name: str, tags: dict) -> str:
    """A keys.RUNNING run held by this process (liveness tags, heartbeat) until set_status ends it."""
    import mlflow

    run_id = mlflow_io.client().create_run(experiment_id, run_name=name, tags={**tags, **liveness.identity()}).info.run_id
    liveness.HEARTBEAT.hold(run_id, mlflow.get_tracking_uri())
    return run_id


def set_status(run_id: str, status: str) -> None:
    """keys.RUNNING: this process takes the run over (a resumed sweep's parent): its liveness tags, its heartbeat."""
    import mlflow
    from mlflow.entities import RunTag

    c = mlflow_io.client()
    if status == keys.RUNNING:
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in liveness.identity().items()])
        c.update_run(run_id, status=keys.RUNNING)
        liveness.HEARTBEAT.hold(run_id, mlflow.get_tracking_uri())
    else:
        liveness.HEARTBEAT.release(run_id)
        c.set_terminated(run_id, status=status)


def kill_stale_children(experiment_id: str, parent_run_id: str) -> list[str]:
    """Children left keys.RUNNING by a process that died (kill -9): mark them KILLED."""
    stale = mlflow_io.find_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        mlflow_io.client().set_tag(run.info.run_id, keys.TAG_ERROR, "the process running this trial died; the trial is retried")
        mlflow_io.client().set_terminated(run.info.run_id, status=keys.KILLED)
    return [r.info.run_id for r in stale]
