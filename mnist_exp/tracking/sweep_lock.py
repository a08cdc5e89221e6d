"""One sweep of a name at a time: a sweep lock on (store, sweep name).

``with sweep_lock.acquire(uri, name): ...`` takes the lock for this process or raises ``SweepLocked``
(exit 2) naming the holder: pid, host, since when, command line. A lock whose holder is gone is
taken over, with one line on stderr. The mechanism sits behind ``SweepLockBackend`` (``try_acquire``,
``release``, ``holder``); ``backend_for(uri)`` picks one from the tracking URI.

``FileSweepLock`` (every URI today): ``fcntl.flock`` on ``<store dir>/leases/<name>.lease``. The
kernel drops the lock when the holder's process ends, however it ends (kill -9 included), so "gone"
needs no guessing; the file's JSON content only names the holder for the message, and is emptied on
a clean release (content left behind under a free lock is a holder that died). The descriptor is not
inherited by the processes a sweep starts (Python opens it close-on-exec); parallel workers take no lock.
(The file and registry names still say "lease": stores written by earlier releases keep working.)

``RegistrySweepLock`` (a tracking server, ``http(s)://``): the sweeps of one server may start on any machine, so
the lock lives in the server itself: a registered model ``mnist-exp.sweep-lease.<name>``, taken by creating
it (atomic on every backend, registry_lock.py), tagged with the holder, whose heartbeat tag the holder refreshes
every ``liveness.HEARTBEAT_S`` s and deletes on release. A holder on this machine that is gone is taken over at
once; one elsewhere when its heartbeat is older than ``liveness.STALE_S`` (clocks agreeing within that).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from mnist_exp.runtime.errors import ConfigError, SweepLocked, StoreError
from mnist_exp.tracking import keys, liveness, mlflow_io, server_store, store
from mnist_exp.tracking.registry_lock import Busy, RegistryLock


@dataclass(frozen=True)
class Holder:
    """Who holds a sweep lock."""

    pid: int
    host: str
    proc_start: str  # liveness.proc_start(): tells a reused pid from the holder
    command: str
    since: float  # epoch seconds

    @classmethod
    def me(cls) -> Holder:
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
        return cls(os.getpid(), liveness.HOST, liveness.proc_start() or "", shlex.join(argv)[:300], time.time())

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on host {self.host} since {since} ({self.command})"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), str(d.get("proc_start", "")), str(d["command"]), float(d["since"]))
        except (ValueError, KeyError, TypeError):
            return None


class SweepLockBackend(Protocol):
    def try_acquire(self, name: str, me: Holder) -> tuple[bool, Holder | None]:
        """(True, the gone holder taken over, or None) when ``me`` now holds ``name``; else (False, the live
        holder, or None if it cannot be told yet)."""

    def release(self, name: str) -> None:
        """Give ``name`` up (only the holder calls it)."""

    def holder(self, name: str) -> Holder | None:
        """The live holder of ``name``, or None when it is free."""


class FileSweepLock:
    """flock on a file per name in ``folder``; see the module docstring."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._held: dict[str, int] = {}  # name -> open descriptor holding the lock

    def path(self, name: str) -> Path:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ConfigError(f"sweep name {name!r}: not usable as a file name")
        return self.folder / f"{name}.lease"

    def try_acquire(self, name: str, me: Holder) -> tuple[bool, Holder | None]:
        path = self.path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"{path}: cannot create the sweep lock: {e.strerror}") from None
        try:
            for attempt in range(3):  # a holder() probe holds a shared lock for an instant
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 2:
                        os.close(fd)
                        return False, self._read_live(path)
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        gone = Holder.parse(_read(fd))  # left by a holder that died without releasing
        data = json.dumps(asdict(me)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._held[name] = fd
        return True, gone

    def release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # empty: released cleanly, nobody to report as gone
        finally:
            os.close(fd)  # drops the lock

    def holder(self, name: str) -> Holder | None:
        path = self.path(name)
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._read_live(path)
        finally:
            os.close(fd)
        return None

    @staticmethod
    def _read_live(path: Path, wait_s: float = 2.0) -> Holder | None:
        """The holder's record. It writes it just after taking the lock (over a dead holder's, if one was
        left), so wait a moment for a record that is not a process of this machine known to be gone."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                found = Holder.parse(path.read_text())
            except OSError:
                found = None
            if found and not _gone(found):
                return found
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def _gone(h: Holder) -> bool:
    """A holder on this machine whose process is no longer running (or whose pid another process now has)."""
    if h.host != liveness.HOST:
        return False
    now = liveness.proc_start(h.pid)
    return now is None or bool(now and h.proc_start and now != h.proc_start)


def _read(fd: int) -> str:
    chunks = []
    while chunk := os.pread(fd, 65536, sum(map(len, chunks))):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class RegistrySweepLock:
    """A lock per sweep name in a tracking server's model registry; see the module docstring."""

    PREFIX = "mnist-exp.sweep-lease."

    def __init__(self, uri: str):
        self.uri = uri
        self._held: dict = {}

    def _lock(self, name: str, me: Holder | None = None):
        description = (f"Lock of sweep `{name}`, not a model: the `mnist-exp sweep` running it holds it and deletes "
                       f"it when it ends. A lock whose holder stopped sending heartbeats ({liveness.STALE_S:.0f} s) "
                       "is taken over by the next sweep of that name.")
        tags = {keys.TAG_LOCK_COMMAND: me.command} if me else {}
        return RegistryLock(mlflow_io.client(self.uri), self.PREFIX + name, description, ttl_s=liveness.STALE_S,
                            heartbeat_s=liveness.HEARTBEAT_S, tags=tags, kind="sweep lock", announce=False, uri=self.uri)

    def _holder(self, tags: dict | None) -> Holder | None:

        if not tags:
            return None
        try:
            return Holder(int(tags.get(keys.TAG_PID, "0")), tags.get(keys.TAG_HOST, "?"),
                          tags.get(keys.TAG_PROC_START, ""), tags.get(keys.TAG_LOCK_COMMAND, "?"),
                          float(tags.get(keys.TAG_LOCK_SINCE, "0")))
        except ValueError:
            return None

    def try_acquire(self, name: str, me: Holder) -> tuple[bool, Holder | None]:
        lock = self._lock(name, me)
        try:
            broken = lock.acquire(0.0)
        except Busy as e:
            return False, self._holder(e.holder)
        self._held[name] = lock
        return True, self._holder(broken)

    def release(self, name: str) -> None:
        lock = self._held.pop(name, None)
        if lock is None:
            return
        try:
            lock.release()
        except Exception as e:
            # The server is gone (the sweep is stopping because of it): the lock stays, its holder's process ends
            # now, and the next sweep of the name takes it over at once here (after STALE_S elsewhere), saying so.
            if not server_store.is_unavailable(e):
                raise

    def holder(self, name: str) -> Holder | None:
        lock = self._lock(name)
        tags = lock.holder()
        return None if tags is None or lock.stale_reason(tags) else self._holder(tags)


def lock_folder(uri: str) -> Path:
    """Beside a local store (a tracking server's leases are in its registry: RegistrySweepLock)."""
    return store.local_store_dir(uri) / "leases"


_backends: dict = {}


def backend_for(uri: str) -> SweepLockBackend:
    if store.is_remote(uri):
        return _backends.setdefault(uri, RegistrySweepLock(uri))
    folder = lock_folder(uri).resolve()
    return _backends.setdefault(folder, FileSweepLock(folder))


_depth: dict[tuple[int, str], int] = {}  # (backend, name) -> nesting depth in this process


@contextlib.contextmanager
def acquire(uri: str, name: str, backend: SweepLockBackend | None = None):
    """Hold the lock on sweep ``name`` of the store at ``uri`` for the block, or raise SweepLocked.
    Re-entrant within a process (a nested acquire of a name this process holds passes through)."""
    backend = backend or backend_for(uri)
    key = (id(backend), name)
    if _depth.get(key):
        _depth[key] += 1
        try:
            yield
        finally:
            _depth[key] -= 1
        return
    ok, other = backend.try_acquire(name, Holder.me())
    if not ok:
        who = other.describe() if other else "another process (it is starting)"
        raise SweepLocked(f"sweep {name} is already running: {who}; wait for it or stop it")
    if other:
        print(f"mnist-exp: sweep {name}: taking over the sweep lock of {other.describe()}: that process is gone",
              file=sys.stderr, flush=True)
    _depth[key] = 1
    try:
        yield
    finally:
        _depth.pop(key, None)
        backend.release(name)
