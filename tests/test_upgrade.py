"""A store written by an earlier release keeps working: resume, compare, promote, predict.

Each archive under tests/fixtures/stores/ was made by that release's own code
(scripts/make_upgrade_fixture.py; what it holds: tests/fixtures/stores/README.md). Every later
release adds its own, and this test opens each of them with the current code.
"""

from __future__ import annotations

import json
import re
import sqlite3
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mnist_exp.cli import main
from mnist_exp.search.state_mirror import unpack_data_only

FIXTURES = Path(__file__).parent / "fixtures" / "stores"
ARCHIVES = sorted(FIXTURES.glob("*.tar.gz"))
MAX_ARCHIVE_BYTES = 3_000_000


def relocate(root: Path, old_root: str, files: list[str]) -> list[str]:
    """Make a store moved from ``old_root`` to ``root`` usable where it lies, as a user who moves their store
    would: MLflow records absolute artifact locations (experiments, runs, logged models, model versions), and
    the sweeps' state files the experiment and search-space paths. Returns the table.column names rewritten."""
    new_root = str(root)
    con = sqlite3.connect(root / "mlruns" / "mlflow.db")
    changed = []
    try:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, col, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                cur = con.execute(f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE instr("{col}", ?) > 0',
                                  (old_root, new_root, old_root))
                if cur.rowcount:
                    changed.append(f"{table}.{col}")
        con.commit()
    finally:
        con.close()
    for name in files:
        path = root / name
        path.write_text(path.read_text().replace(old_root, new_root))
    return changed


def test_the_previous_release_has_its_fixture():
    from mnist_exp._version import __version__

    releases = re.findall(r"^## (\d+\.\d+\.\d+)$", (Path(__file__).parents[1] / "CHANGELOG.md").read_text(), flags=re.M)
    assert releases[0] == __version__  # the CHANGELOG's newest entry is this release
    assert {FIXTURES / "0.1.0.tar.gz", FIXTURES / f"{releases[1]}.tar.gz"} <= set(ARCHIVES)  # the first, the one before


@pytest.fixture(params=ARCHIVES, ids=[a.name.removesuffix(".tar.gz") for a in ARCHIVES])
def old_store(request, tmp_path, monkeypatch):
    """The archive unpacked and relocated into tmp_path; cwd and MLFLOW_TRACKING_URI point at it (as ``store``)."""
    archive: Path = request.param
    assert archive.stat().st_size < MAX_ARCHIVE_BYTES, f"{archive.name}: {archive.stat().st_size:,} bytes"
    with tarfile.open(archive) as tar:
        unpack_data_only(tar, tmp_path)
    info = json.loads((tmp_path / "fixture.json").read_text())
    changed = relocate(tmp_path, info["root"], info["files_naming_root"])
    assert {"experiments.artifact_location", "runs.artifact_uri"} <= set(changed), changed
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    import mlflow

    mlflow.set_tracking_uri(uri)
    return tmp_path, info


def sweep_runs(name: str):
    from mlflow import MlflowClient

    c = MlflowClient()
    exp = c.get_experiment_by_name("mnist-exp")

    def search(kind):
        return c.search_runs([exp.experiment_id], max_results=1000,
                             filter_string=f"tags.`mnist_exp.kind` = '{kind}' and tags.`mnist_exp.sweep` = '{name}'")
    return search("sweep"), search("trial")


def finished_by_trial(children) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in children:
        if c.info.status == "FINISHED":
            out.setdefault(c.data.tags["mnist_exp.trial_id"], []).append(c.info.run_id)
    return out


@pytest.mark.slow
def test_a_store_of_an_earlier_release_resumes_compares_promotes_and_predicts(old_store, embedded, capsys):
    from mlflow import MlflowClient

    root, info = old_store
    old_root_there = Path(info["root"]).exists()  # only while make_upgrade_fixture.py runs
    cut = info["sweeps"]["interrupted"]
    [old_parent], old_children = sweep_runs("interrupted")
    assert old_parent.info.status == "KILLED"
    old_finished = finished_by_trial(old_children)
    assert sorted(old_finished) == cut["finished"]
    client = MlflowClient()
    champ = info["champion"]
    old_champion = client.get_model_version_by_alias(champ["model"], champ["alias"])
    assert str(old_champion.version) == champ["version"]

    # 1. The interrupted sweep resumes under the same parent and ends with every planned trial finished once;
    #    the trial the old release finished is kept, not trained again.
    assert main(["sweep", cut["file"]]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "resuming" in out, out
    [parent], children = sweep_runs("interrupted")
    assert parent.info.run_id == old_parent.info.run_id and parent.info.status == "FINISHED"
    finished = finished_by_trial(children)
    assert sorted(finished) == [str(i) for i in range(cut["planned"])], finished
    assert all(len(ids) == 1 for ids in finished.values()), finished
    for trial in cut["finished"]:
        assert finished[trial] == old_finished[trial]
    kt = [json.loads(f.read_text()) for f in (root / "mlruns" / "tuner" / "interrupted").glob("trial_*/trial.json")]
    assert sorted(t["trial_id"] for t in kt) == sorted(finished), kt
    assert {t["status"] for t in kt} == {"COMPLETED"}

    # 2. compare lists both sweeps with their trials.
    assert main(["compare"]) == 0
    out = capsys.readouterr().out
    for name, sweep in info["sweeps"].items():
        n = len(finished) if name == "interrupted" else len(sweep["finished"])
        assert f"== sweep {name}: {n} finished trial(s)" in out, out

    # 3. promote runs the guard against the old champion: the data decide which way.
    champ_acc = float(old_champion.tags["metric.test_accuracy"])
    code = main(["promote", "interrupted"])
    out, err = capsys.readouterr()
    [cand_run] = re.findall(r"interrupted trial \d+ \(run ([0-9a-f]+)\)", out + err)
    best = max(c.data.metrics["objective"] for c in children if c.info.status == "FINISHED")
    cand = client.get_run(cand_run)
    assert cand.data.metrics["objective"] == best and cand.data.tags["mnist_exp.sweep"] == "interrupted"
    accepted = cand.data.metrics["test_accuracy"] >= champ_acc
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{champ['model']}'")}
    now = client.get_model_version_by_alias(champ["model"], champ["alias"])
    if accepted:
        assert code == 0, (out, err)
        assert now.run_id == cand_run and str(now.version) != champ["version"]
        assert set(versions) == {champ["version"], str(now.version)}
    else:
        assert code == 1 and "is below the champion's" in err, (out, err)
        assert str(now.version) == champ["version"] and set(versions) == {champ["version"]}
    assert versions[champ["version"]].run_id == old_champion.run_id  # the old version is untouched

    # 4. predict with the old champion's version.
    digits = root / "digits.npz"
    np.savez(digits, x=embedded["x_test"][:3])
    assert main(["predict", "--json", "--model", f"models:/{champ['model']}/{champ['version']}", str(digits)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["digit_found"] and len(line["probabilities"]) == 10
        assert line["label"] == int(np.argmax(line["probabilities"])) and abs(sum(line["probabilities"]) - 1) < 1e-3
    # Nothing was written where the store was made: a store still naming its old root writes the new runs'
    # artifacts there, and the old champion's model is then not found.
    assert old_root_there or not Path(info["root"]).exists()
