"""Processes that serve: free ports, waiting for an address to answer, collecting a process's output."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A free port on 127.0.0.1 that no other test process will pick: each pytest-xdist worker draws from its own
    range below the kernel's ephemeral ports (which bind(0) and outgoing connections use), so two workers never
    race for one port between choosing it and a server binding it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = 20000 + 1000 * (index % 12)
    for port in random.sample(range(low, low + 1000), 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + 999}")


def wait_http(url: str, proc, timeout: float = 120) -> None:
    """Poll url until it answers; fail with the server's output if it exits or the time runs out."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read()[-3000:] if proc.stdout else ""
                raise AssertionError(f"server at {url} did not start:\n{out}") from None
            time.sleep(0.5)


class Output:
    """A started process (its own session, stdout piped, text) whose output a thread collects, so it never blocks
    on a full pipe; ``name`` labels the failure messages."""

    def __init__(self, popen: subprocess.Popen, name: str = ""):
        self.p, self.name, self.lines = popen, name or " ".join(map(str, popen.args[:3])), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.out)
            if m:
                return m
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {pattern!r} within {timeout} s:\n{self.out[-4000:]}")

    def wait(self, timeout: float) -> int:
        """The exit code; past ``timeout`` the process group is killed and the test fails with its output."""
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.out[-4000:]}") from None


def served_predictions(model_uri: str, x, venv_bin: Path):
    """``x``'s answer from a real ``mlflow models serve`` of ``model_uri`` on 127.0.0.1 (its REST /invocations),
    as a NumPy array; the server is stopped before returning. ``mlflow`` runs from the venv's bin, with that bin
    on PATH (where it finds uvicorn); ``--env-manager local`` (it would otherwise look for pyenv or conda)."""
    import json

    import numpy as np

    port = free_port()
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [str(venv_bin / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", server)
        req = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": x.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return np.asarray(json.loads(resp.read())["predictions"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


class Outage:
    """A TCP proxy on 127.0.0.1 in front of a server's ``port``, which the test takes ``down()`` (every open
    connection cut, even mid-answer, and new ones refused, as when the server's machine drops off the network)
    and brings back ``up()``: an outage of an exact length without restarting the server."""

    def __init__(self, port: int):
        self.target, self.port = port, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            cut, self._open = self._open, []
        for s in ([listener] if listener else []) + cut:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # taken down meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def job_runner_processes(pid: int) -> list[str]:
    """Command lines of MLflow's job runner (its huey consumers) under the server process ``pid``: none when the
    runner is off, as for every server mnist-exp starts (mnist_exp.server.launch.JOB_RUNNER_OFF)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if "mlflow.server.jobs" in line:
            found.append(line)
    return found
