"""What a run costs, logged on the run: MLflow's system metrics and this process's own CPU time and memory.

MLflow's ``system/*`` metrics (CPU, memory, disk, network; GPU where ``pynvml`` is installed) are
machine-wide: with parallel trials every trial would show the same figures. ``process_*`` are the
trial process's own: CPU seconds used during the run and its resident memory (at the start, at the end,
and the peak during the run).

MLflow's ``start_run(log_system_metrics=True)`` ends the run first and flushes the sampler after, and
drops the samples of a run shorter than one interval. Here ``tracking`` starts MLflow's
``SystemMetricsMonitor`` itself and ``end`` stops it, writing one last sample, *before* the run ends:
every run gets at least one point, and nothing is written to a run after it ended.
"""

from __future__ import annotations

import atexit
import resource
import sys
import threading
import time
from dataclasses import dataclass

# Seconds between samples: a few points on a quick trial (~7 s); each sample costs one read of the run
# and one batched write: under 1% of one core at this interval.
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, read by MLflow, wins.
SAMPLING_S = 2.0
MB = 1e6  # megabytes as MLflow's system metrics count them


@dataclass
class _Held:
    cpu_s: float  # time.process_time() at the start: user + system time of every thread of this process
    rss_mb: float | None
    monitor: object | None  # mlflow's SystemMetricsMonitor, or None when off or unavailable


_held: dict[str, _Held] = {}
_lock = threading.Lock()


def begin(run_id: str, uri: str, resumed: bool = False) -> None:
    """Start accounting for ``run_id``: CPU clock, memory, the peak reset, MLflow's sampler (``resumed``: a run
    reopened by this process, whose samples continue the earlier process's steps)."""
    reset_peak()
    held = _Held(time.process_time(), rss_mb(), _start_monitor(run_id, uri, resumed))
    with _lock:
        _held[run_id] = held


def end(run_id: str) -> dict[str, float]:
    """Stop the run's sampler (its last sample written now) and return the process metrics to log.
    Call before the run ends; a second call (or one for a run never begun) returns {}."""
    with _lock:
        held = _held.pop(run_id, None)
    if held is None:
        return {}
    _stop_monitor(held.monitor)
    out = {"process_cpu_s": time.process_time() - held.cpu_s}
    peak = peak_rss_mb()
    now = rss_mb()
    if peak is not None:
        out["process_peak_rss_mb"] = peak
    if held.rss_mb is not None and now is not None:
        out.update(process_rss_start_mb=held.rss_mb, process_rss_end_mb=now)
    return out


def drop(run_id: str) -> None:
    """Stop the run's sampler without a last sample (the run is no longer this process's to write)."""
    with _lock:
        held = _held.pop(run_id, None)
    if held is not None and held.monitor is not None:
        stop = getattr(held.monitor, "_shutdown_event", None)
        if stop is not None:
            stop.set()


def rss_mb() -> float | None:
    """This process's resident memory now."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / MB
    except Exception:
        return None


def peak_rss_mb() -> float | None:
    """The process's peak resident memory since the last ``reset_peak`` (Linux), else since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB  # bytes on macOS, KiB on Linux


def reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0, ``/proc/self/clear_refs``),
    so that the next trial's peak is its own, not the largest of every earlier trial in this process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS only; nothing else about the process changes
        return True
    except OSError:
        return False


def system_metrics_enabled() -> bool:
    """On unless the user set MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false, or psutil is missing."""
    import importlib.util

    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING as ENABLED

    if ENABLED.is_set() and not ENABLED.get():
        return False
    return importlib.util.find_spec("psutil") is not None


def _start_monitor(run_id: str, uri: str, resumed: bool = False):
    try:
        if not system_metrics_enabled():
            return None
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Its INFO lines ("Started monitoring system metrics." ...) would be three more lines per trial, and its
        # warnings, when the store stops answering, would land after the sweep's own one-line error.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLING_S, tracking_uri=uri,
                                       resume_logging=resumed)
        monitor.start()  # a daemon thread: it never keeps the process alive
        return monitor
    except Exception as e:  # system metrics are a nicety: never the reason a run fails
        print(f"mnist-exp: warning: no system metrics for run {run_id}: {type(e).__name__}: {e}"[:300],
              file=sys.stderr)
        return None


def _stop_monitor(monitor) -> None:
    """Join the sampler thread, then log one last sample covering the time since its last one."""
    if monitor is None:
        return
    try:
        monitor.finish()  # sets its stop event, joins the thread, flushes what it had queued
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception:  # a store that stopped answering: the run itself says so when it is ended
        pass


@atexit.register
def _stop_all() -> None:
    """At exit no new sample starts (no join: exit must not wait for a write in flight)."""
    with _lock:
        monitors = [h.monitor for h in _held.values() if h.monitor is not None]
    for m in monitors:
        stop = getattr(m, "_shutdown_event", None)  # SystemMetricsMonitor's own stop flag (MLflow 3.17)
        if stop is not None:
            stop.set()
