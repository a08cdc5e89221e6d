"""Retention: ``mnist-exp gc SWEEP --keep-top K`` deletes the models and plots of a sweep's other trials.

Kept whole: the K best trials (the sweep's objective, as ``compare`` and ``promote`` rank them), every run a
registered model version points at (its own model, a refit's, an ensemble's members), every refit and ensemble
run (they are not trials), and any trial that is still running. Kept in every run: params, metrics, tags and the
small files (config, curves, probabilities, so an ensemble can still be chosen among the trials with a model).
The sweep's lock is held throughout, so a sweep of that name cannot run meanwhile, and a running one refuses gc.

Each collected trial is tagged ``mnist_exp.gc`` first (fault point ``gc_tagged``), then its files are deleted:
a trial whose model may be half-deleted is never offered to ``promote``, and gc run again finishes the deletion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mnist_exp import tracking
from mnist_exp.results import compare
from mnist_exp.runtime import faults
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.tracking import keys, readers

PLOTS = "plots"  # a trial's figures (model/plots.py); its model is a logged model of its own


@dataclass(frozen=True)
class Item:
    run_id: str
    trial: str
    model_location: str | None  # the logged model's artifact location, None when gone or never logged
    bytes: int


@dataclass(frozen=True)
class Collection:
    sweep: str
    kept: dict  # run id -> why it is kept
    items: list  # Items to delete

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)


def plan(experiment_id: str, sweep: str, keep_top: int) -> Collection:
    """What ``gc`` would delete in ``sweep`` and what it keeps (and why); reads only."""
    if keep_top < 0:
        raise ConfigError(f"--keep-top {keep_top}: must be 0 or more")
    parents = compare.latest_parents(readers.MLflowRuns(), experiment_id, [sweep])
    if not parents:
        raise ConfigError(f"no sweep named {sweep}")
    parent = parents[sweep]
    objective, maximize = compare.sweep_objectives([parent])[sweep]
    sign = 1 if maximize else -1
    trials = tracking.trial_runs(experiment_id, parent.info.run_id)
    ranked = sorted((r for r in trials if r.info.status == keys.FINISHED and keys.METRIC_OBJECTIVE in r.data.metrics),
                    key=lambda r: (keys.TAG_PRUNED not in r.data.tags, sign * r.data.metrics[keys.METRIC_OBJECTIVE]),
                    reverse=True)
    kept = {r.info.run_id: f"top {keep_top}" for r in ranked[:keep_top]}
    for run_id in _registered_or_members(experiment_id):
        kept.setdefault(run_id, "registered, or a member of an ensemble")
    items = []
    for r in trials:
        if r.info.run_id in kept:
            continue
        if r.info.status == "RUNNING":
            kept[r.info.run_id] = "running"
            continue
        location = _model_location(r)
        size = _size(r.info.artifact_uri, PLOTS) + (_size(location) if location else 0)
        if size or keys.TAG_GC not in r.data.tags:
            items.append(Item(r.info.run_id, r.data.tags.get(keys.TAG_TRIAL, "?"), location, size))
    return Collection(sweep, kept, items)


def collect(c: Collection) -> int:
    """Tag, then delete, every item of ``c``; the bytes freed."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = tracking.client()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for item in c.items:
        client.set_tag(item.run_id, keys.TAG_GC, f"model and plots deleted at {when}")
        faults.point("gc_tagged")
        run = client.get_run(item.run_id)
        _delete(get_artifact_repository(run.info.artifact_uri), PLOTS)
        if item.model_location:
            _delete(get_artifact_repository(item.model_location), None)
    return c.bytes


def _registered_or_members(experiment_id: str) -> set[str]:
    """Runs a registered version points at, and the members of every ensemble run (registered or not)."""
    client = tracking.client()
    out = set()
    for v in client.search_model_versions(max_results=10000):
        tags = v.tags or {}
        out |= {v.run_id, tags.get(keys.TAG_RUN_ID, "")}
        out |= set(filter(None, tags.get(keys.TAG_ENSEMBLE_OF, "").split(",")))
    for r in readers.MLflowRuns().runs(experiment_id, {keys.TAG_KIND: "ensemble"}):
        out |= set(filter(None, r.data.tags.get(keys.TAG_ENSEMBLE_OF, "").split(",")))
    return out - {"", None}


def _model_location(run) -> str | None:
    uri = run.data.tags.get(keys.TAG_MODEL_URI, "")
    if not uri.startswith("models:/m-"):
        return None
    from mlflow.exceptions import MlflowException

    try:
        return tracking.client().get_logged_model(uri[len("models:/"):]).artifact_location
    except MlflowException:
        return None


def _size(root_uri: str, path: str | None = None) -> int:
    """Bytes under ``path`` of the artifacts at ``root_uri`` (0 when there is nothing)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from mlflow.exceptions import MlflowException

    repo, total, todo = get_artifact_repository(root_uri), 0, [path]
    while todo:
        try:
            entries = repo.list_artifacts(todo.pop())
        except (OSError, MlflowException):  # a folder deleted meanwhile, or never made
            continue
        for e in entries:
            if e.is_dir:
                todo.append(e.path)
            else:
                total += e.file_size or 0
    return total


def _delete(repo, path: str | None) -> None:
    try:
        repo.delete_artifacts(path)
    except FileNotFoundError:
        pass
