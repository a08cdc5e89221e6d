"""No zombie runs: every run mnist-exp creates says which process runs it, and the next command on the
store marks KILLED the RUNNING runs whose process is gone (kill -9, a lost machine, a closed terminal).

A run carries ``mnist_exp.pid``, ``mnist_exp.host``, ``mnist_exp.proc_start`` (``<boot id>:<start
ticks>`` from /proc, so a pid reused by another process, or by a process after a reboot, is not taken
for the run's) and ``mnist_exp.heartbeat`` (epoch seconds, ms precision), which a daemon thread refreshes every
``HEARTBEAT_S`` while the run is RUNNING in this process.

``reap(uri)`` judges each RUNNING run that carries those tags: on this machine (same host and boot)
it is dead when its pid is gone or now belongs to another process (start time differs); a run from
another machine is dead when its heartbeat is older than ``STALE_S`` (clocks are assumed to agree
within a minute). Dead runs end KILLED with ``mnist_exp.error`` saying why, and their end time is
their last heartbeat. Runs without the tags (an older mnist-exp, or MLflow used directly) are left
alone; a resumed sweep still marks its own stale children (sweep.py). A local sqlite store is read
without importing MLflow (readers.SqliteRuns): MLflow is imported only when there is a run to mark.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time

from mnist_exp.tracking import keys, mlflow_io, readers, store

# One tag write per process every 30 s: nothing next to a trial's logging. MNIST_EXP_HEARTBEAT_S changes it
# (the same value on every machine sharing a store: a reaper judges others' runs by its own).
HEARTBEAT_S = float(os.environ.get("MNIST_EXP_HEARTBEAT_S") or 30)
STALE_S = 4 * HEARTBEAT_S  # a run from another machine silent this long is dead


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


HOST = socket.gethostname()
BOOT_ID = _boot_id()


def proc_start(pid: int | str = "self") -> str | None:
    """``<boot id>:<start ticks>`` of a live process; "" where /proc is missing; None if the pid is gone
    (or a zombie: exited, not yet waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    if fields[0] in ("Z", "X"):
        return None
    return f"{BOOT_ID}:{fields[19]}"  # field 22 of proc(5), starttime


def identity() -> dict[str, str]:
    """The liveness tags of a run started by this process, heartbeat included."""
    return {keys.TAG_PID: str(os.getpid()), keys.TAG_HOST: HOST, keys.TAG_PROC_START: proc_start() or "",
            keys.TAG_HEARTBEAT: f"{time.time():.3f}"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def dead_reason(tags: dict, now: float | None = None) -> str | None:
    """Why the process behind a RUNNING run with these tags is gone, or None (alive, or unknown)."""
    if keys.TAG_PID not in tags:
        return None  # not ours to judge
    try:
        pid = int(tags[keys.TAG_PID])
    except ValueError:
        return None
    host, start = tags.get(keys.TAG_HOST, ""), tags.get(keys.TAG_PROC_START, "")
    who = f"pid {pid} on host {host}"
    if host == HOST and start.partition(":")[0] == BOOT_ID:  # this machine, this boot: ask the kernel
        now_start = proc_start(pid)
        if now_start is None:
            return f"its process ({who}) is gone"
        if now_start and start and now_start != start:
            return f"its process ({who}) is gone (the pid now belongs to another process)"
        if not now_start and not _pid_alive(pid):
            return f"its process ({who}) is gone"
        return None
    try:
        beat = float(tags.get(keys.TAG_HEARTBEAT) or "nan")
    except ValueError:
        beat = float("nan")
    age = (now or time.time()) - beat
    if age != age:  # NaN: no heartbeat recorded at all
        return f"its process ({who}) recorded no heartbeat"
    if age > STALE_S:
        return f"no heartbeat from its process ({who}) for {age:.0f} s"
    return None


# --- the heartbeat of the runs this process holds ----------------------------------------------------


class Heartbeat:
    """One daemon thread per process refreshing ``mnist_exp.heartbeat`` on the runs registered with
    ``hold``. ``release`` returns only once no write to that run is in flight, so nothing is written
    to a run after it ended; the thread never keeps the process alive (daemon, stopped at exit)."""

    def __init__(self, interval_s: float = HEARTBEAT_S):
        self.interval_s = interval_s
        self._runs: dict[str, str] = {}  # run id -> tracking URI
        self._lock = threading.Lock()  # held while a beat writes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, run_id: str, uri: str) -> None:
        with self._lock:
            self._runs[run_id] = uri
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="mnist-exp-heartbeat", daemon=True)
                self._thread.start()

    def release(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def stop(self) -> None:
        """No beat starts after this. Takes no lock: at exit it must not wait for a beat in flight."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                runs = list(self._runs.items())
            for run_id, uri in runs:
                with self._lock:  # one write at a time, so release() waits for at most one
                    if self._stop.is_set() or self._runs.get(run_id) != uri:
                        continue
                    try:
                        _write_beat(run_id, uri)
                    except Exception:  # a missed beat is harmless; STALE_S spans several
                        pass


def _write_beat(run_id: str, uri: str) -> None:
    mlflow_io.client(uri).set_tag(run_id, keys.TAG_HEARTBEAT, f"{time.time():.3f}")


HEARTBEAT = Heartbeat()
atexit.register(HEARTBEAT.stop)


# --- reaping --------------------------------------------------------------------------------------------


def reap(uri: str, command: str = "mnist-exp", out=None) -> list[str]:
    """Mark KILLED the RUNNING runs of the store whose process is gone; one line each on ``out``
    (stderr). Returns their run ids."""
    if store.sqlite_path(uri) is not None:
        # Read-only, without MLflow; a store that does not exist yet (or is being created) has nothing to reap.
        reader = readers.SqliteRuns.open(uri)
        if reader is not None:
            try:
                running = reader.runs(None, {}, status=keys.RUNNING)
            finally:
                reader.close()
        elif readers.SqliteRuns.revision(uri) is None:
            return []
        else:  # a schema revision the direct reader does not know (another MLflow migrated it): through MLflow
            running = readers.MLflowRuns(uri).runs(None, {}, status=keys.RUNNING)
    else:
        running = readers.MLflowRuns(uri).runs(None, {}, status=keys.RUNNING)
    now = time.time()
    dead = [(r, why) for r in running if (why := dead_reason(r.data.tags, now))]
    if not dead:
        return []
    c = mlflow_io.client(uri)
    out = out or sys.stderr
    marked = []
    for r, why in dead:
        run_id = r.info.run_id
        if c.get_run(run_id).info.status != keys.RUNNING:  # ended meanwhile
            continue
        try:  # the run's end: the last instant it was known alive (never before its start)
            ended = max(round(float(r.data.tags[keys.TAG_HEARTBEAT]) * 1000), r.info.start_time or 0)
        except (KeyError, ValueError):
            ended = None
        c.set_tag(run_id, keys.TAG_ERROR, f"marked KILLED by {command}: {why}")
        c.set_terminated(run_id, status=keys.KILLED, end_time=ended)
        marked.append(run_id)
        print(f"{command}: run {run_id} ({_describe(r.data.tags)}) was RUNNING but {why}: marked KILLED",
              file=out, flush=True)
    return marked


def _describe(tags: dict) -> str:

    kind, sweep, trial = tags.get(keys.TAG_KIND), tags.get(keys.TAG_SWEEP), tags.get(keys.TAG_TRIAL)
    if kind == "trial":
        return f"trial {trial} of sweep {sweep}"
    if kind == "sweep":
        return f"sweep {sweep}"
    return tags.get(keys.TAG_RUN_NAME) or kind or "run"
