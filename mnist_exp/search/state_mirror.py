"""A sweep's Keras Tuner state kept with its parent run on the tracking server, so that a chief on another machine
resumes it; the local folder (``mlruns/tuner/<sweep>/``) is a cache of it.

Each save of the oracle (a trial handed out, ended, revoked or pruned) packs the state's JSON files (oracle,
trials, sweep state) into a deterministic archive and, when it changed, writes it to the parent run's artifact
slot that the pointer does not name (``tuner_state/a.tar.gz`` or ``b.tar.gz``), then moves the pointer, the tag
``mnist_exp.tuner_state`` = ``<slot> <version> <sha256>``, to it: written last, so a process killed at any point
leaves the pointer on a whole archive. The save returns only once the server holds the new state: a trial is never
handed out that the server's copy does not know. A save the server does not take raises StoreUnavailable (the
sweep stops as for a lost store; run it again once the server answers).

On start, a sweep on a tracking server makes its local cache the server's copy (:func:`restore`) when the two
differ, so the same command resumes the sweep on any machine, under the sweep's lease (one chief at a time).
Stores on this machine's disk keep their state in the folder alone, as before.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mnist_exp import tracking
from mnist_exp.runtime import faults
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.search.sweep_state import STATE_FILE
from mnist_exp.search.trial_failures import StoreUnavailable, first_line
from mnist_exp.tracking import keys

ARTIFACT_DIR = "tuner_state"
SLOTS = ("a", "b")


@dataclass(frozen=True)
class Pointer:
    """Which slot holds the newest whole archive, its version (1, 2, ...) and its sha256."""

    slot: str
    version: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.slot} {self.version} {self.sha256}"

    @property
    def artifact(self) -> str:
        return f"{ARTIFACT_DIR}/{self.slot}.tar.gz"

    @classmethod
    def parse(cls, text: str | None) -> Pointer | None:
        parts = (text or "").split()
        if len(parts) != 3 or parts[0] not in SLOTS or not parts[1].isdigit() or len(parts[2]) != 64:
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def next(self, sha256: str) -> Pointer:
        return Pointer(SLOTS[1 - SLOTS.index(self.slot)], self.version + 1, sha256)


def state_files(project: Path) -> list[Path]:
    """The files that resume a sweep: oracle.json, the tuners' and mnist-exp's JSON, each trial's trial.json (not
    the trials' checkpoints, which live in the store)."""
    return sorted([*project.glob("*.json"), *project.glob("trial_*/trial.json")])


def archive(project: Path) -> bytes:
    """The state files as a tar.gz that is byte for byte the same for the same files (no times, owners)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w",
                                                                             format=tarfile.PAX_FORMAT) as tar:
        for path in state_files(project):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(project).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StateMirror:
    """The server's copy of one sweep's state, pushed on every save of its oracle."""

    def __init__(self, parent_run_id: str, project: Path, pointer: Pointer | None):
        self.parent_run_id, self.project, self.pointer = parent_run_id, Path(project), pointer
        self.failure: str | None = None  # why the last push failed (the chief stops the sweep on it)

    def push(self) -> None:
        """Write the state's archive to the free slot, then move the pointer; nothing when it is unchanged. Once a
        push failed, every later one fails too (the sweep is stopping)."""
        if self.failure:
            raise StoreUnavailable(self.failure)
        data = archive(self.project)
        sha = digest(data)
        if self.pointer is not None and self.pointer.sha256 == sha:
            return
        new = self.pointer.next(sha) if self.pointer is not None else Pointer(SLOTS[0], 1, sha)
        try:
            self._check_pointer(new)
            with tempfile.TemporaryDirectory(prefix="mnist-exp-state-") as tmp:
                path = Path(tmp) / f"{new.slot}.tar.gz"
                path.write_bytes(data)
                tracking.log_artifact(path, ARTIFACT_DIR, run_id=self.parent_run_id)
            faults.point("after_tuner_state_uploaded")
            tracking.set_tags({keys.TAG_TUNER_STATE: str(new)}, run_id=self.parent_run_id)
        except Exception as e:
            self.failure = (f"the tracking server did not take the sweep's Keras Tuner state "
                            f"({type(e).__name__}: {first_line(e)})")
            raise StoreUnavailable(self.failure) from e
        self.pointer = new

    def _check_pointer(self, new: Pointer) -> None:
        """The server's pointer must be the one this chief last wrote (or the one it is writing, when the last tag
        reached the server but its answer did not): otherwise another chief writes this sweep's state, and the free
        slot may be the one the server's pointer names."""
        on_server = Pointer.parse(tracking.get_run(self.parent_run_id).data.tags.get(keys.TAG_TUNER_STATE))
        if on_server == self.pointer:
            return
        raise RuntimeError(f"the state on the server is version {on_server.version if on_server else 'none'}, this "
                           f"chief's {self.pointer.version if self.pointer else 'none'}: another chief of this sweep?")


def active_parent(client, experiment_name: str, sweep: str):
    """The sweep's parent run on the server (not superseded by --overwrite), or None."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    parents = client.search_runs([experiment.experiment_id], f"tags.`{keys.TAG_KIND}` = 'sweep' and "
                                                             f"tags.`{keys.TAG_SWEEP}` = '{sweep}'", max_results=1000)
    live = [p for p in parents if not p.data.tags.get(keys.TAG_SUPERSEDED)]
    return max(live, key=lambda p: p.info.start_time) if live else None


def restore(uri: str, experiment_name: str, sweep: str, project: Path) -> Pointer | None:
    """Make ``project`` (the local cache) the server's copy of ``sweep``'s state; returns its pointer (None: the
    server holds none). A cache of another parent run (a sweep since replaced with --overwrite) is set aside; a
    sweep whose state the server does not hold (started by mnist-exp 0.9.0) resumes only where its folder is."""
    project = Path(project)
    for leftover in (f".{project.name}.old", f".{project.name}.restoring"):  # what a kill during a swap left
        _remove(project.parent / leftover)
    client = tracking.client(uri)
    parent = active_parent(client, experiment_name, sweep)
    if parent is None:
        return None
    local_parent = _local_parent(project)
    if local_parent is not None and local_parent != parent.info.run_id:
        _remove(project)  # the state of a parent run that is no longer the sweep's
        print(f"sweep {sweep}: the local Keras Tuner state was of an earlier run of this sweep: set aside", flush=True)
    pointer = Pointer.parse(parent.data.tags.get(keys.TAG_TUNER_STATE))
    if pointer is None:
        if not project.is_dir() and _has_trials(client, parent):
            raise ConfigError(f"sweep {sweep}: its Keras Tuner state is not on the tracking server (the sweep was "
                              "started by mnist-exp 0.9.0 or earlier): resume it on the machine that ran it, or start "
                              "afresh with --overwrite")
        return None
    if project.is_dir() and digest(archive(project)) == pointer.sha256:
        return pointer
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line says it, not a bar
    with tempfile.TemporaryDirectory(prefix="mnist-exp-state-") as tmp:
        local = client.download_artifacts(parent.info.run_id, pointer.artifact, tmp)
        data = Path(local).read_bytes()
    if digest(data) != pointer.sha256:
        raise ConfigError(f"sweep {sweep}: the Keras Tuner state on the tracking server ({pointer.artifact} of run "
                          f"{parent.info.run_id}) does not match its checksum; resume on the machine that ran it, "
                          "or start afresh with --overwrite")
    _swap_in(project, data)
    print(f"sweep {sweep}: Keras Tuner state taken from the tracking server (version {pointer.version})", flush=True)
    return pointer


def _local_parent(project: Path) -> str | None:
    """The parent run id the cached state names, if it can be read."""
    try:
        return json.loads((project / STATE_FILE).read_text(encoding="utf-8")).get("parent_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _has_trials(client, parent) -> bool:
    found = client.search_runs([parent.info.experiment_id], f"tags.`{keys.TAG_PARENT_RUN}` = '{parent.info.run_id}'",
                               max_results=1)
    return bool(found)


def _swap_in(project: Path, data: bytes) -> None:
    """Replace the folder by the archive's files: unpacked beside it, then renamed over it."""
    fresh = project.parent / f".{project.name}.restoring"
    _remove(fresh)
    fresh.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        unpack_data_only(tar, fresh)
    faults.point("after_tuner_state_unpacked")
    old = project.parent / f".{project.name}.old"
    if project.exists():
        project.rename(old)
    fresh.rename(project)
    _remove(old)


def unpack_data_only(tar: tarfile.TarFile, into: Path) -> None:
    """Unpack only plain files and folders, all inside ``into``, or raise tarfile.TarError: tarfile's "data" filter
    where this Python has it (3.11.4 on), the same refusal checked here on 3.11.0-3.11.3, which lack it."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    root = into.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
            raise tarfile.TarError(f"{member.name}: not a plain file or folder inside the archive")
    tar.extractall(into)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
