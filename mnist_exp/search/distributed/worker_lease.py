"""A worker's hold on its trial, kept alive from threads: renewal with the chief, and the chief process watched.

Light on purpose (no TensorFlow): a local worker watches its chief from the moment it starts.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from mnist_exp.runtime import signals
from mnist_exp.search.distributed import wire


class Lease:
    """What the lease-renewal thread knows, shared with the training callbacks (Keras Tuner deep-copies
    callbacks: this object is shared, not copied)."""

    def __init__(self):
        self.trial_id: str | None = None
        self.lost: str | None = None  # trial id whose lease the chief says is gone
        self.last_ok = time.monotonic()

    def __deepcopy__(self, memo):
        return self


def renew_lease(chan, lease: Lease, worker: str, desc: dict, address: str) -> None:
    """Renew the lease every ``renew_s``. A chief that says stop, or that has not answered for twice
    the lease (it has given the trial away by then), stops this worker: SIGTERM to itself, so the trial's
    run ends KILLED at a safe point; a second one after a grace period forces it, then a hard exit."""
    beat = wire.json_method(chan, "Renew")
    every, lease_s = desc["renew_s"], desc["lease_s"]

    def loop():
        while True:
            time.sleep(every)
            try:
                answer = beat({"trial_id": lease.trial_id}, timeout=max(every, 2.0))
            except Exception:
                if time.monotonic() - lease.last_ok > 2 * lease_s:
                    print(f"worker {worker}: chief {address} silent for {2 * lease_s:.0f} s; stopping", flush=True)
                    break
                continue
            lease.last_ok = time.monotonic()
            if answer.get("lost") and lease.trial_id and lease.lost != lease.trial_id:
                lease.lost = lease.trial_id
                print(f"worker {worker}: trial {lease.trial_id} was given to another worker (lease expired); "
                      "stopping it", flush=True)
            if answer.get("stop"):
                print(f"worker {worker}: the chief is stopping; stopping", flush=True)
                break
        _stop_self()

    threading.Thread(target=loop, name="lease-renewal", daemon=True).start()


def _stop_self(grace_s: float = 15.0) -> None:
    """SIGTERM to this process, unless a signal already reached it: a chief that stops signals its local workers
    too, and a second signal would force the stop, cutting short the run's last writes (its process metrics). Then
    a SIGTERM after ``grace_s`` forces it, and after another ``grace_s`` a hard exit."""
    if not signals.received():
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(137)


def watch_parent(pid: int, poll_s: float = 1.0, grace_s: float = 15.0) -> None:
    """A local worker whose chief process is gone (kill -9) stops, as above, without waiting out the lease."""

    def watch():
        while os.getppid() == pid:
            time.sleep(poll_s)
        _stop_self(grace_s)

    threading.Thread(target=watch, name="watch-chief", daemon=True).start()
