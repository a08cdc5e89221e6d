"""A worker stopping itself (search/distributed/worker_lease.py), in a process of its own with real signals."""

import signal
import subprocess
import sys

# The chief stops a local worker twice over: its SIGTERM, and "stop" in the worker's next lease renewal, on which
# the renewal thread stops the worker itself. The trial's run is then ending (its last writes: the process metrics),
# where a second SIGTERM would force the stop and cut those writes short (seen in CI: a KILLED run without
# process_cpu_s).
CHIEF_STOPS_A_WORKER = """
import os, signal, threading, time
from mnist_exp.runtime import signals
from mnist_exp.search.distributed import worker_lease

with signals.handled():
    try:
        with signals.deferred():  # a fit
            os.kill(os.getpid(), signal.SIGTERM)  # the chief's
            time.sleep(0.2)
            signals.check()
    except KeyboardInterrupt:
        threading.Thread(target=worker_lease._stop_self, args=(GRACE,), daemon=True).start()  # the renewal's
        try:
            time.sleep(1.0)  # the run's last writes
            print("the run ended cleanly", flush=True)
        except KeyboardInterrupt:
            print("the run's last writes were cut short", flush=True)
"""

# The chief gone silent (or kill -9): no signal has come, so the worker stops itself, and forces it after the grace.
CHIEF_SILENT = """
import threading, time
from mnist_exp.runtime import signals
from mnist_exp.search.distributed import worker_lease

with signals.handled():
    try:
        with signals.deferred():
            threading.Thread(target=worker_lease._stop_self, args=(0.5,), daemon=True).start()
            while not signals.pending():
                time.sleep(0.01)
            signals.check()
    except KeyboardInterrupt:
        print("stopping", flush=True)
        time.sleep(30)  # a stop that hangs: forced after the grace
"""


def run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_worker_the_chief_stopped_is_not_signalled_again_by_its_lease_renewal():
    proc = run(CHIEF_STOPS_A_WORKER.replace("GRACE", "30"))
    assert proc.returncode == 0 and proc.stdout == "the run ended cleanly\n", proc.stdout + proc.stderr


def test_a_worker_whose_chief_is_silent_stops_itself_then_is_forced():
    proc = run(CHIEF_SILENT)
    assert proc.stdout == "stopping\n", proc.stdout + proc.stderr
    # the grace's SIGTERM, raised at once in the hanging stop (Python exits on a KeyboardInterrupt as SIGINT would)
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt: signal 15" in proc.stderr, proc.stderr
