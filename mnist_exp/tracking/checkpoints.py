"""Checkpoints kept with their run in the tracking store: versioned folders of files plus a pointer written last.

A version is a folder of artifacts under ``checkpoint/<version>/`` of the run. Uploading it is not atomic (a
process killed mid-upload leaves part of a folder), so nothing reads a version until the pointer names it:
the run's tag ``mnist_exp.checkpoint``, written after the upload, in one tag write (atomic in every store).
The pointer also lists the versions still needed (``keep``); older ones are deleted after it moved. Any
machine that can reach the store can read a checkpoint, so a trial killed on one worker resumes on another.

Fault points: ``checkpoint_uploaded`` (files there, pointer not moved), ``checkpoint_pointed`` (pointer moved,
older versions not yet deleted).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mnist_exp.runtime import faults
from mnist_exp.tracking import keys, mlflow_io

ROOT = "checkpoint"


@dataclass(frozen=True)
class Pointer:
    """What a run's checkpoint tag says: the newest complete version and the versions it still needs."""

    version: str
    keep: tuple[str, ...]
    meta: dict  # small facts readers filter on without a download (e.g. the epoch)

    @staticmethod
    def parse(text: str | None) -> Pointer | None:
        """The pointer in a tag's text; None when absent or unreadable (a damaged tag is no checkpoint)."""
        if not text:
            return None
        try:
            d = json.loads(text)
            return Pointer(str(d["version"]), tuple(str(v) for v in d["keep"]), dict(d.get("meta") or {}))
        except (ValueError, KeyError, TypeError):
            return None


def pointer(run) -> Pointer | None:
    """The checkpoint pointer of a run (an MLflow Run), if it has one."""
    return Pointer.parse(run.data.tags.get(keys.TAG_CHECKPOINT))


def write(run_id: str, version: str, folder: Path, keep: tuple[str, ...] = (), meta: dict | None = None) -> None:
    """Upload ``folder`` as ``version`` of the run's checkpoint, then point at it; delete versions no longer kept."""
    c = mlflow_io.client()
    c.log_artifacts(run_id, str(folder), f"{ROOT}/{version}")
    faults.point("checkpoint_uploaded")
    keep = tuple(dict.fromkeys((version, *keep)))
    c.set_tag(run_id, keys.TAG_CHECKPOINT, json.dumps({"version": version, "keep": list(keep), "meta": meta or {}}))
    faults.point("checkpoint_pointed")
    for old in versions(run_id):
        if old not in keep:
            _delete(run_id, f"{ROOT}/{old}")


def versions(run_id: str) -> list[str]:
    """The version folders a run holds (complete or not)."""
    try:
        return [Path(f.path).name for f in mlflow_io.client().list_artifacts(run_id, ROOT) if f.is_dir]
    except Exception:
        return []


def download(run_id: str, version: str, dest: Path | None = None) -> Path:
    """The version's files in a local folder (a temporary one unless ``dest`` is given)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar among the epoch lines
    dest = Path(dest or tempfile.mkdtemp(prefix="mnist-exp-checkpoint-"))
    return Path(mlflow_io.client().download_artifacts(run_id, f"{ROOT}/{version}", str(dest)))


def remove(run_id: str) -> None:
    """Delete a run's checkpoint: its pointer first (no reader follows it any more), then every version."""
    try:
        mlflow_io.client().delete_tag(run_id, keys.TAG_CHECKPOINT)
    except Exception:  # no pointer (never written, or removed already)
        pass
    _delete(run_id, ROOT)


def _delete(run_id: str, path: str) -> None:
    """Delete artifacts of a run (a local folder or the tracking server's artifact proxy); best effort: what
    stays is unread garbage, never a wrong checkpoint."""
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        uri = mlflow_io.client().get_run(run_id).info.artifact_uri
        get_artifact_repository(uri).delete_artifacts(path)
    except Exception:
        pass
