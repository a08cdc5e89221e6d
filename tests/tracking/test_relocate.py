"""A local store copied to another folder (tracking/relocation.py): refused in one line before anything is written,
relocated by ``mnist-exp relocate`` (backup, one transaction, verified; a kill -9 before its commit leaves the store
as it was), then resumed, promoted and used to predict, every new artifact in the new folder."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3

import pytest
from PIL import Image

from helpers import cli, cli_here

def files(folder):
    return {p for p in folder.rglob("*") if p.is_file()}


def _db(tmp_path, *locations):
    con = sqlite3.connect(":memory:")
    con.execute("create table experiments (artifact_location text)")
    con.executemany("insert into experiments values (?)", [(loc,) for loc in locations])
    return con


def test_only_a_store_that_records_another_folder_as_its_home_counts_as_moved(tmp_path):
    from mnist_exp.tracking.relocation import moved_from

    here = tmp_path / "artifacts" / "p" / "mlruns"  # "artifacts" higher up in its own path
    (here / "artifacts").mkdir(parents=True)
    own = [(here / "artifacts").as_uri(), (here / "artifacts" / "1").as_uri(), str(here / "artifacts" / "2")]
    assert moved_from(_db(tmp_path, *own), here) == []
    (tmp_path / "link").symlink_to(here, target_is_directory=True)  # the same folder through a symlink
    assert moved_from(_db(tmp_path, *own), tmp_path / "link") == []
    assert moved_from(_db(tmp_path, "s3://bucket/x", "mlflow-artifacts:/1"), here) == []  # not local: not ours
    old = tmp_path / "old" / "mlruns"
    assert moved_from(_db(tmp_path, *own, (old / "artifacts" / "3").as_uri()), here) == [str(old)]
    assert moved_from(_db(tmp_path, (old / "artifacts").as_uri()), tmp_path / "no-artifacts-here") == []


@pytest.mark.slow
def test_a_copied_store_is_refused_then_relocated_resumed_promoted_and_used(swept_template, embedded, tmp_path,
                                                                              monkeypatch):
    from mnist_exp.cli import main

    moved = tmp_path / "moved"
    shutil.copytree(swept_template, moved)
    db = moved / "mlruns" / "mlflow.db"
    old_artifacts = files(swept_template / "mlruns" / "artifacts")
    monkeypatch.chdir(moved)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    before = db.read_bytes()

    refused = cli_here("compare", "a", check=2)
    assert refused.stderr == (f"mnist-exp compare: error: {db}: this store was moved or copied here from "
                              f"{swept_template / 'mlruns'} and still records its artifacts there; run: mnist-exp "
                              f"relocate --tracking-uri sqlite:///{db} (backs the database up, rewrites the "
                              "locations, verifies)\n")
    assert db.read_bytes() == before  # refused before anything was written

    killed = cli("relocate", env={"MNIST_EXP_FAULT": "relocate_rewritten"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert cli_here("compare", "a").returncode == 2  # the rewrite never committed: the store is as it was
    [backup] = (moved / "mlruns").glob("mlflow.db.bak-*")
    assert sqlite3.connect(backup).execute("select count(*) from runs").fetchone()[0] > 0

    done = cli_here("relocate", check=0).stdout
    assert re.fullmatch(rf"relocated from {re.escape(str(swept_template / 'mlruns'))}: \d+ experiments.artifact_location, "
                        r"\d+ runs.artifact_uri, \d+ logged_models.artifact_location; backup .*mlflow.db.bak-\S+; "
                        r"verified: the store records its own folder, 0 registered model\(s\) found\n", done), done
    with sqlite3.connect(db) as con:
        for (uri,) in con.execute("select artifact_uri from runs"):
            assert uri.startswith((moved / "mlruns" / "artifacts").as_uri()), uri
    assert cli_here("relocate", check=0).stdout.startswith("nothing to do: the store records its own folder")

    # resumed with one more trial, promoted, used: every new file lands in the new folder
    assert main(["sweep", "a.yaml", "--max-trials", "3"]) == 0
    assert main(["promote", "a"]) == 0
    Image.fromarray(embedded["x_test"][0]).save(moved / "digit.png")
    assert main(["predict", "digit.png", "--json"]) == 0
    assert files(swept_template / "mlruns" / "artifacts") == old_artifacts
    assert cli_here("relocate", check=0).stdout.endswith("1 registered model(s) found\n")
