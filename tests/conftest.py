"""Shared fixtures: a temporary MLflow store, tiny real MNIST slices, and CLI helpers.

Tests train real (tiny) Keras models and write to a real sqlite MLflow store in a temp dir.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = ["--set", "data.train_size=200", "--set", "data.test_size=100", "--epochs", "1"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh project folder with mlruns/; cwd and MLFLOW_TRACKING_URI point at it."""
    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    import mlflow

    mlflow.set_tracking_uri(uri)
    return tmp_path


@pytest.fixture(scope="session")
def embedded():
    from mnist_exp.model.data import EMBEDDED_PATH

    with np.load(EMBEDDED_PATH) as z:
        return {k: z[k] for k in z.files}


def runs(experiment="mnist-exp", filter_string=""):
    from mlflow import MlflowClient

    c = MlflowClient()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000)


def wait_for_store(proc, experiment="mnist-exp", timeout=180) -> None:
    """Block until the subprocess ``proc`` has created the store of MLFLOW_TRACKING_URI and our experiment
    in it. Opening a sqlite store that another process is still creating runs MLflow's migrations twice
    at once (seen in CI: "duplicate column name: step", CircularDependencyError, in either process), so
    the store is polled read-only, without MLflow, until then."""
    import time

    from mnist_exp.tracking.readers import SqliteRuns

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else f"exited {proc.returncode}"
        reader = SqliteRuns.open(os.environ["MLFLOW_TRACKING_URI"])
        if reader:
            try:
                if reader.experiment_id(experiment):
                    return
            except Exception:  # locked while the other process writes
                pass
            finally:
                reader.close()
        time.sleep(0.2)
    raise AssertionError(f"the store was not created within {timeout} s")


def cli(*args, check=None, timeout=600, env=None):
    """Run the installed console script in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(VENV_BIN / "mnist-exp"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_SWEEP = f"""# mnist-exp sweep tiny.yaml
name: tiny
search_space: {ROOT / "search_spaces" / "small.yaml"}
data: {{source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}}
training: {{epochs: 1}}
tuner: {{kind: random, max_trials: 2}}
"""  # two one-epoch trials on 200 digits: the cheapest real sweep


SWEEP_YAML = """# mnist-exp sweep {name}.yaml
name: {name}
search_space: {space}
seed: {seed}
data: {{source: embedded, train_size: 600, test_size: 200, validation_split: 0.2}}
training: {{epochs: 2}}
tuner: {{kind: random, max_trials: 2}}
"""


@pytest.fixture(scope="session")
def swept_template(tmp_path_factory):
    """A store with two finished tiny sweeps (a, b) and one (c) holding a failed trial. Built once."""
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.model.data import load_data
    from mnist_exp.spec.space import load_space
    from mnist_exp.search.sweep import run_sweep
    from mnist_exp.model.training import CNNHyperModel

    class FailSecondFit(CNNHyperModel):
        calls = 0

        def fit(self, hp, model, *args, **kwargs):
            FailSecondFit.calls += 1
            if FailSecondFit.calls == 2:
                raise RuntimeError("injected failure")
            return super().fit(hp, model, *args, **kwargs)

    root = tmp_path_factory.mktemp("swept")
    (root / "mlruns").mkdir()
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    space = ROOT / "search_spaces" / "small.yaml"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        path = write_yaml(root / f"{name}.yaml", SWEEP_YAML.format(name=name, space=space, seed=seed))
        exp = load_experiment(path)
        hm = FailSecondFit(1, 480) if name == "c" else None
        run_sweep(exp, load_space(exp.search_space), load_data(exp.data, exp.seed), uri, hypermodel=hm)
    return root


@pytest.fixture
def swept_store(swept_template, tmp_path, monkeypatch):
    """A private copy of the swept store's database (artifacts stay shared and read-only)."""
    import shutil

    (tmp_path / "mlruns").mkdir()
    shutil.copy(swept_template / "mlruns" / "mlflow.db", tmp_path / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return tmp_path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 120) -> None:
    """Poll url until it answers; fail with the server's output if it exits or the time runs out."""
    import time
    import urllib.request

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


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A real team tracking server (mnist_exp.server: MLflow on PostgreSQL, artifacts proxied) on a free port.
    Under root PostgreSQL runs as the postgres user, who cannot enter pytest's private (0700) temp folders: the
    server's folder is then made in /tmp, open to be traversed (0711), and removed afterwards."""
    import shutil
    import tempfile

    from mnist_exp import server

    if os.geteuid() == 0:
        folder = Path(tempfile.mkdtemp(prefix="mnist-exp-server-"))
        folder.chmod(0o711)
    else:
        folder = tmp_path_factory.mktemp("server")
    srv = server.start(folder / "srv", port=free_port())
    try:
        yield srv
    finally:
        srv.stop()
        if os.geteuid() == 0:
            shutil.rmtree(folder, ignore_errors=True)


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
