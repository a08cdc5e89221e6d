import os
import subprocess

import pandas as pd
from PIL import Image

from mnist_exp.cli import main

from helpers import VENV_BIN, cli_here, free_port, wait_http
from mnist_exp.tracking import keys
import pytest


@pytest.mark.slow
def test_leaderboard_sorted_by_objective_with_failed_trials_apart(swept_store, capsys):
    assert main(["compare", "a", "c", "--csv", "board.csv", "--plot", "board.png", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "== sweep a: 2 finished trial(s), sorted by val_accuracy (max)" in out
    assert "== sweep c: 1 finished trial(s)" in out
    assert "-- 1 failed / killed / running trial run(s):" in out and "injected failure" in out
    assert "== sweep b" not in out
    df = pd.read_csv("board.csv")
    for col in ("sweep", "trial_id", "status", "run_id", "learning_rate", "filters_1", "activation", "batch_size",
                "objective", "best_val_accuracy", "final_val_accuracy", "test_accuracy", "test_loss", "epochs_run",
                "duration_s"):
        assert col in df, col
    assert sorted(df["sweep"].unique()) == ["a", "c"] and len(df) == 4
    assert list(df[df.status == "FAILED"]["sweep"]) == ["c"]
    # the printed order of sweep a follows the objective
    a = df[(df.sweep == "a")].sort_values("objective", ascending=False)
    first, second = (f"{v:.4g}" for v in a["objective"])
    block = out.split("== sweep a")[1].split("== sweep c")[0]
    assert block.index(first) <= block.index(second)
    with Image.open("board.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300


def test_empty_store_is_a_one_line_message_and_exit_0(store, capsys):
    assert main(["compare"]) == 0
    assert "no sweeps in" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_all_sweeps(swept_store, capsys):
    assert main(["compare", "--metric", "test_accuracy", "--top", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("a", "b", "c"):
        assert f"== sweep {name}:" in out
    assert "sorted by test_accuracy" in out
    assert main(["compare", "nosuch"]) == 2


@pytest.mark.slow
def test_compare_against_a_tracking_server(swept_store):
    port = free_port()
    db = f"sqlite:///{swept_store / 'mlruns' / 'mlflow.db'}"
    from mnist_exp.server.launch import JOB_RUNNER_OFF

    env = {**os.environ, **JOB_RUNNER_OFF, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # as mnist-exp starts servers
    env.pop("MLFLOW_TRACKING_URI")
    server = subprocess.Popen([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", db, "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", server)
        proc = cli_here("compare", "a", "b", "--tracking-uri", url, check=0, env={"MLFLOW_TRACKING_URI": ""})
        assert "== sweep a: 2 finished" in proc.stdout and "== sweep b: 2 finished" in proc.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)


def _normalised(runs):
    import math

    def clean(d):
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    return sorted((r.info.run_id, r.info.status, r.info.start_time, r.info.end_time, clean(r.data.params),
                   clean(r.data.metrics), clean(r.data.tags)) for r in runs)


@pytest.mark.slow
def test_the_sqlite_reader_reads_what_mlflow_reads(swept_store):
    """compare reads a local store without MLflow (docs/performance-overview.md); it must see the same runs."""
    from mlflow import MlflowClient

    from mnist_exp.results import compare
    from mnist_exp.tracking import readers

    uri = f"sqlite:///{swept_store / 'mlruns' / 'mlflow.db'}"
    fast = readers.SqliteRuns.open(uri)
    # None here means the installed MLflow writes a schema revision not in KNOWN_SCHEMA_REVISIONS:
    # check that runs/tags/params/latest_metrics/experiments are unchanged, then add it.
    assert fast is not None
    slow = readers.MLflowRuns(uri)
    exp_id = slow.experiment_id("mnist-exp")
    assert fast.experiment_id("mnist-exp") == exp_id and fast.experiment_id("nosuch") is None
    c = MlflowClient(uri)
    trials = slow.runs(exp_id, {keys.TAG_KIND: "trial"})
    c.log_metric(trials[0].info.run_id, "odd", float("nan"))  # MLflow stores NaN apart (is_nan)
    c.delete_run(trials[1].info.run_id)  # deleted runs are left out by both
    for tags in ({keys.TAG_KIND: "sweep"}, {keys.TAG_KIND: "trial"},
                 {keys.TAG_KIND: "trial", keys.TAG_SWEEP: "a"}):
        got, want = fast.runs(exp_id, tags), slow.runs(exp_id, tags)
        assert got and _normalised(got) == _normalised(want), tags
    assert trials[1].info.run_id not in {r.info.run_id for r in fast.runs(exp_id, {keys.TAG_KIND: "trial"})}
    pd.testing.assert_frame_equal(compare.trials_table(fast.runs(exp_id, {keys.TAG_KIND: "trial"})),
                                  compare.trials_table(slow.runs(exp_id, {keys.TAG_KIND: "trial"})))


def test_other_stores_are_read_through_mlflow(tmp_path):
    import sqlite3

    from mnist_exp.tracking import readers

    assert readers.SqliteRuns.open("http://127.0.0.1:5000") is None
    assert readers.SqliteRuns.open(f"sqlite:///{tmp_path / 'missing.db'}") is None
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as con:  # a schema revision we have not checked
        con.execute("create table alembic_version (version_num varchar(32))")
        con.execute("insert into alembic_version values ('0000future')")
    assert readers.SqliteRuns.open(f"sqlite:///{db}") is None


@pytest.mark.slow
def test_a_store_at_a_schema_revision_the_fast_reader_does_not_know_is_read_through_mlflow(swept_store, capsys):
    """An MLflow upgrade migrates the store to a revision KNOWN_SCHEMA_REVISIONS may not list yet: compare
    falls back to MLflow's client and says so once. store.py lets only the installed MLflow's head through
    (checked here), so the revision is changed under run_reader itself, then put back for MLflow to read."""
    import sqlite3

    import pytest

    from mnist_exp.results import compare
    from mnist_exp.tracking import readers, store
    from mnist_exp.runtime.errors import StoreError

    db = swept_store / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{db}"
    [head] = store.schema_heads()
    older = store.schema_revisions()[head][0]  # the revision before it

    def set_revision(rev):
        with sqlite3.connect(db) as con:
            con.execute("update alembic_version set version_num = ?", (rev,))
        con.close()

    for rev, why in ((older, "is older than the installed MLflow"), ("ffffffffffff", "is unknown to the installed")):
        set_revision(rev)
        with pytest.raises(StoreError, match=why):
            store.check_store(db, write=False)
    reader = readers.run_reader(uri)
    assert isinstance(reader, readers.MLflowRuns)
    assert capsys.readouterr().err == ("mnist-exp compare: store schema ffffffffffff is not one the fast reader "
                                       "knows; reading through MLflow\n")
    set_revision(head)  # what the installed MLflow reads (its client refuses any other revision)
    exp_id = reader.experiment_id("mnist-exp")
    assert set(compare.latest_parents(reader, exp_id)) == {"a", "b", "c"}
    fast = readers.run_reader(uri)
    assert isinstance(fast, readers.SqliteRuns) and capsys.readouterr().err == ""  # a known revision: no notice
    assert _normalised(reader.runs(exp_id, {keys.TAG_KIND: "trial"})) == \
        _normalised(fast.runs(exp_id, {keys.TAG_KIND: "trial"}))
