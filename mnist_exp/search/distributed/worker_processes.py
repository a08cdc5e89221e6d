"""Local worker processes of a chief (oracle_chief.py): launched, watched and stopped on this machine.

``mnist-exp sweep --parallel N`` makes the launching process Keras Tuner's chief and starts N
``mnist-exp worker`` processes here, each with a share of the cores; ``--serve HOST:PORT`` lets workers
on other machines join the same chief. Local and remote workers run the same code (worker.py): a
local one is told the chief's address, the store and the token, nothing from the chief's memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mnist_exp.search.distributed import wire

ENV_IP, ENV_PORT, ENV_ID = "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"


def worker_ids(n: int) -> list[str]:
    return [f"tuner{i}" for i in range(n)]


def threads_per_worker(n: int, configured: int | None) -> int:
    """Cores shared out: 2 workers on 2 cores get 1 thread each (TF's default would give each 2)."""
    return configured or max(1, (os.cpu_count() or 1) // n)


class ChiefEnvironment:
    """Keras Tuner decides chief/worker from the environment at Tuner construction."""

    def __init__(self, ip: str, port: int):
        self.values = {ENV_IP: ip, ENV_PORT: str(port), ENV_ID: "chief"}
        self.saved: dict = {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def launch_workers(uri: str, address: str, token: str, ids: list[str], threads: int, verbose: bool = False):
    """``mnist-exp worker`` processes on this machine, one per id, connected to the chief at ``address``."""
    procs = {}
    env = {k: v for k, v in os.environ.items() if k not in (ENV_IP, ENV_PORT, ENV_ID)}
    env.update({wire.TOKEN_ENV: token, "TF_CPP_MIN_LOG_LEVEL": "2"})
    for tid in ids:
        cmd = [sys.executable, "-m", "mnist_exp", "worker", "--chief", address, "--tracking-uri", uri,
               "--id", tid, "--threads", str(threads), "--chief-pid", str(os.getpid())]
        if verbose:
            cmd.append("--verbose")
        # Own session: a terminal's Ctrl-C reaches the chief only, which stops each worker once.
        procs[tid] = subprocess.Popen(cmd, env=env, start_new_session=True)
    return procs


def poll_workers(procs: dict, codes: dict) -> None:
    """Record the exit codes of workers that have ended since the last call (one line for a failure)."""
    for tid, p in procs.items():
        if tid not in codes and p.poll() is not None:
            codes[tid] = p.returncode
            if p.returncode:
                print(f"worker {tid} exited with code {p.returncode}", file=sys.stderr, flush=True)


def stop_workers(procs: dict, grace_s: float = 60.0) -> None:
    """SIGTERM (each worker marks its running trial KILLED), then SIGKILL after grace_s."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
