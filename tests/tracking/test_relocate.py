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

from helpers import cli

pytestmark = pytest.mark.slow


def files(folder):
    return {p for p in folder.rglob("*") if p.is_file()}


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

    refused = cli("compare", "a", check=2)
    assert refused.stderr == (f"mnist-exp compare: error: {db}: this store was moved or copied here from "
                              f"{swept_template / 'mlruns'} and still records its artifacts there; run: mnist-exp "
                              f"relocate --tracking-uri sqlite:///{db} (backs the database up, rewrites the "
                              "locations, verifies)\n")
    assert db.read_bytes() == before  # refused before anything was written

    killed = cli("relocate", env={"MNIST_EXP_FAULT": "relocate_rewritten"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert cli("compare", "a").returncode == 2  # the rewrite never committed: the store is as it was
    [backup] = (moved / "mlruns").glob("mlflow.db.bak-*")
    assert sqlite3.connect(backup).execute("select count(*) from runs").fetchone()[0] > 0

    done = cli("relocate", check=0).stdout
    assert re.fullmatch(rf"relocated from {re.escape(str(swept_template / 'mlruns'))}: \d+ experiments.artifact_location, "
                        r"\d+ runs.artifact_uri, \d+ logged_models.artifact_location; backup .*mlflow.db.bak-\S+; "
                        r"verified: the store records its own folder, 0 registered model\(s\) found\n", done), done
    with sqlite3.connect(db) as con:
        for (uri,) in con.execute("select artifact_uri from runs"):
            assert uri.startswith((moved / "mlruns" / "artifacts").as_uri()), uri
    assert cli("relocate", check=0).stdout.startswith("nothing to do: the store records its own folder")

    # resumed with one more trial, promoted, used: every new file lands in the new folder
    assert main(["sweep", "a.yaml", "--max-trials", "3"]) == 0
    assert main(["promote", "a"]) == 0
    Image.fromarray(embedded["x_test"][0]).save(moved / "digit.png")
    assert main(["predict", "digit.png", "--json"]) == 0
    assert files(swept_template / "mlruns" / "artifacts") == old_artifacts
    assert cli("relocate", check=0).stdout.endswith("1 registered model(s) found\n")
