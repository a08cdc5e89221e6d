"""Shared fixtures: a temporary MLflow store, tiny real MNIST slices, swept stores, a real tracking server.

Tests train real (tiny) Keras models and write to a real sqlite MLflow store in a temp dir. Helpers that are
not fixtures live in the ``helpers`` package, imported by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, SWEEP_YAML, free_port, write_yaml
from helpers.commands import reset_tracking_uri


@pytest.fixture(autouse=True)
def _no_leftover_tracking_uri():
    """Each test starts with MLflow's process-wide tracking URI unset. In-process commands (and the ``store``
    fixtures) call ``mlflow.set_tracking_uri``, a module global that outlives the test and outranks
    MLFLOW_TRACKING_URI: left behind, a later test's ``models:/`` lookups would read an earlier test's store."""
    yield
    reset_tracking_uri()


def shared_template(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once for the whole run: under pytest-xdist every worker is a
    session of its own, so the first worker to ask builds it in the run's common temp folder, holding a lock, and the
    others wait for it and use the same one (read it, or copy it: never change it). A folder left half built by a
    worker that died is built again."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder, built = base / name, base / f"{name}.built"
    with open(base / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this worker dies
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An empty store as mnist-exp creates one (tracking/store.py: MLflow's tables migrated to their head), made
    once per run: migrating a new one takes seconds, in every test that opens a store."""
    from mnist_exp.tracking import store as storelib

    return shared_template(tmp_path_factory, "empty-store",
                           lambda folder: storelib.ensure_store(folder / "mlflow.db", write=True)) / "mlflow.db"


def copy_empty_store(template: Path, db: Path) -> None:
    """``template`` copied to ``db``, its Default experiment's artifact location moved along."""
    import shutil
    import sqlite3

    shutil.copy(template, db)
    con = sqlite3.connect(db)
    try:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    ((db.parent / "artifacts").as_uri(),))
        con.commit()
    finally:
        con.close()


@pytest.fixture
def store(tmp_path, monkeypatch, request, empty_store):
    """A project folder with mlruns/ holding an empty store (none under the ``fresh_store`` mark: the first
    command creates it); cwd and MLFLOW_TRACKING_URI point at it."""
    (tmp_path / "mlruns").mkdir()
    if request.node.get_closest_marker("fresh_store") is None:
        copy_empty_store(empty_store, tmp_path / "mlruns" / "mlflow.db")
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


@pytest.fixture(scope="session")
def swept_template(tmp_path_factory):
    """A store with two finished tiny sweeps (a, b) and one (c) holding a failed trial. Built once per run."""
    return shared_template(tmp_path_factory, "swept", _sweep_template)


def _sweep_template(root: Path) -> None:
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

    (root / "mlruns").mkdir()
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    space = ROOT / "search_spaces" / "small.yaml"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        path = write_yaml(root / f"{name}.yaml", SWEEP_YAML.format(name=name, space=space, seed=seed))
        exp = load_experiment(path)
        hm = FailSecondFit(1, 480) if name == "c" else None
        run_sweep(exp, load_space(exp.search_space), load_data(exp.data, exp.seed), uri, hypermodel=hm)


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
    srv = server.start(folder / "srv", port=free_port(), pg_port=free_port(), auth_on=False)  # auth: test_server_auth
    try:
        yield srv
    finally:
        srv.stop()
        if os.geteuid() == 0:
            shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Slow tests first: under pytest-xdist (CI: ``-n 2 --dist loadscope --no-loadscope-reorder``, a module's tests on
    one worker, so its module fixtures are built once; modules in the order of their first test) the long ones start
    early and the run does not end waiting on one of them while the other worker is idle. The order is otherwise
    kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
