"""Retention (``mnist-exp gc``, results/gc.py) on a real sweep of four trials in a local store: the dry run changes
nothing, the champion (a registered version) and the top K are kept whole, every run keeps its params, metrics and
tags, the bytes printed are the bytes freed, a kill -9 mid-way is finished by the next gc, and a running sweep
refuses it."""

import re
from pathlib import Path

import pytest

from helpers import TINY_SWEEP, cli, cli_here, write_yaml

pytestmark = pytest.mark.slow


def artifact_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "mlruns").rglob("*") if p.is_file() and "artifacts" in p.parts)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A sweep of four tiny trials, its best promoted; shared by this module's tests (the refusal first)."""
    root = tmp_path_factory.mktemp("gc")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_yaml(root / "tiny.yaml", TINY_SWEEP.replace("max_trials: 2", "max_trials: 4"))
        cli_here("sweep", "tiny.yaml", check=0)
        cli_here("promote", "tiny", check=0)
        yield root


def trials(root):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-exp")
    runs = client.search_runs([exp.experiment_id], "tags.`mnist_exp.kind` = 'trial'")
    return client, {r.info.run_id: r for r in runs}


def test_a_running_sweep_refuses_gc(project, monkeypatch):
    monkeypatch.chdir(project)
    from mnist_exp.tracking import sweep_lock

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    size0 = artifact_bytes(project)
    with sweep_lock.acquire(uri, "tiny"):
        refused = cli("gc", "tiny", "--keep-top", "0", check=2)
    assert "sweep tiny is already running" in refused.stderr and artifact_bytes(project) == size0


def test_gc_keeps_the_champion_and_the_top_k_and_survives_a_kill(project, monkeypatch):
    monkeypatch.chdir(project)
    client, before = trials(project)
    champion = client.get_model_version_by_alias("mnist-cnn", "champion").run_id
    assert len(before) == 4 and champion in before
    size0 = artifact_bytes(project)

    dry = cli_here("gc", "tiny", "--keep-top", "1", "--dry-run", check=0).stdout
    assert artifact_bytes(project) == size0 and "would be freed" in dry
    planned = re.findall(r"would delete trial \d+ \(run (\w+)\)", dry)
    assert len(planned) == 3 and champion not in planned  # the champion is the best trial: top 1 and registered

    killed = cli("gc", "tiny", "--keep-top", "1", env={"MNIST_EXP_FAULT": "gc_tagged@2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = cli_here("gc", "tiny", "--keep-top", "1", check=0).stdout  # the next gc finishes what the killed one began
    freed = float(re.search(r"(\d+\.\d) MB freed", done).group(1))
    _, after = trials(project)
    for run_id, run in before.items():  # nothing but files is lost, in any run
        assert after[run_id].data.params == run.data.params and after[run_id].data.metrics == run.data.metrics
        assert {k: v for k, v in after[run_id].data.tags.items() if k != "mnist_exp.gc"} == run.data.tags
    collected = {r for r in after if "mnist_exp.gc" in after[r].data.tags}
    assert collected == set(planned)
    for run_id in before:
        files = {p.name for p in (project / "mlruns").rglob("*") if run_id in p.parts}
        assert ("predictions.png" in files) == (run_id not in collected), run_id
    assert size0 - artifact_bytes(project) > 0.8 * freed * 1e6 > 0  # what it says it freed (this gc's part)
    again = cli_here("gc", "tiny", "--keep-top", "1", check=0).stdout
    assert "0 trial(s), 0.0 MB freed" in again  # nothing left to do
    cli_here("promote", "tiny", check=0)  # the champion's model is whole
    cli_here("compare", "tiny", check=0)
