"""The tracking store: created once and atomically by racing commands; unusable stores are one line and
exit 2 with nothing changed (tracking servers as the store: test_server_store)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from mnist_exp.tracking import store as storelib
from mnist_exp.cli import main

from helpers import TINY, VENV_BIN

pytestmark = pytest.mark.fresh_store  # these tests are about the store's creation and its files

ROUNDS = 8  # of four commands started together on a new store (before the fix: 8 rounds of 8 failed)


def _state(db: Path) -> tuple[str | None, list[str], list]:
    """(schema revision, _alembic_tmp_* tables, experiments (id, name, artifacts)) of a store, read without MLflow."""
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        rev = con.execute("select version_num from alembic_version").fetchall()
        exps = con.execute("select experiment_id, name, artifact_location from experiments").fetchall()
    finally:
        con.close()
    return (rev[0][0] if len(rev) == 1 else repr(rev)), [t for t in tables if t.startswith("_alembic_tmp_")], exps


@pytest.fixture(scope="module")
def good_db(tmp_path_factory) -> Path:
    """A store created by storelib.ensure_store (MLflow's migrations, once) to damage in copies."""
    db = tmp_path_factory.mktemp("good") / "mlflow.db"
    storelib.ensure_store(db, write=True)
    return db


def test_head_revision_is_the_installed_mlflows():
    """store reads the head from MLflow's migration scripts (no list to go stale); it must be alembic's."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    assert storelib.schema_heads() == [_get_latest_schema_revision()]
    assert set(storelib.schema_revisions()) == {s.revision for s in script.walk_revisions()}


# Forks the commands from one interpreter that has imported MLflow once: each round's four processes start
# within milliseconds (a tighter race than four interpreters importing MLflow for seconds each), at a
# fraction of the cost. Prints each round's exit codes as JSON.
RACE = """
import json, os, sys, traceback
import mlflow.store.tracking.sqlalchemy_store, pandas  # noqa: F401  (imported once, before forking)
from mnist_exp import cli, tracking
from mnist_exp.results import compare, promote
from mnist_exp.tracking import store  # noqa: F401
base, rounds, cmds = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
codes = []
for r in range(rounds):
    root = os.path.join(base, f"r{r}")
    os.makedirs(os.path.join(root, "mlruns"))
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlruns/mlflow.db"
    sys.stdout.flush()
    pids = []
    for i, argv in enumerate(cmds):
        pid = os.fork()
        if pid == 0:
            rc = 99
            try:
                for fd, name in ((1, "out"), (2, "err")):
                    f = os.open(os.path.join(root, f"{i}.{name}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    os.dup2(f, fd)
                    os.close(f)
                rc = cli.main(argv)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        pids.append(pid)
    codes.append([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids])
print(json.dumps(codes))
"""


@pytest.mark.slow
def test_four_commands_on_a_new_store_leave_it_fully_migrated(tmp_path):
    """Four commands that each open the store (compare reads it; promote opens it through MLflow's client)
    started together on a new store, ROUNDS times. Before store.ensure_store, this harness had commands killed
    by MLflow's migrations racing (`duplicate column name: step`, alembic `CommandError`) in 8 rounds of 8.
    (Started as four separate interpreters, 5 rounds of 6 failed and 4 left `_alembic_tmp_*` tables behind.)"""
    cmds = [["compare"], ["promote", "--dry-run"], ["compare", "--top", "3"], ["promote", "--dry-run", "--alias", "x"]]
    proc = subprocess.run([str(VENV_BIN / "python"), "-c", RACE, str(tmp_path), str(ROUNDS), json.dumps(cmds)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.splitlines()[-1])
    head = storelib.schema_heads()
    for r in range(ROUNDS):
        root = tmp_path / f"r{r}"
        db = root / "mlruns" / "mlflow.db"
        uri = f"sqlite:///{db}"
        outs = [((root / f"{i}.out").read_text(), (root / f"{i}.err").read_text()) for i in range(len(cmds))]
        report = f"round {r}:\n" + "\n".join(f"{c} -> {rc}\n{err[-1500:]}" for c, (_, err), rc in zip(cmds, outs, codes[r]))
        assert codes[r] == [0, 2, 0, 2], report
        for c, (out, err) in zip(cmds, outs):
            if c[0] == "compare":
                assert out.startswith(f"no sweeps in {uri} (experiment mnist-exp)") and err == "", report
            else:  # MLflow's client opened the store and found no experiment: one line, no alembic error
                assert err == f"mnist-exp promote: error: no experiment mnist-exp in {uri}; run mnist-exp sweep first\n", report
        revision, tmp_tables, exps = _state(db)
        # the Default experiment's artifacts beside the store, where `mnist-exp ui` and tracking.configure put them
        default = (0, "Default", (db.parent / "artifacts" / "0").as_uri())
        assert [revision] == head and tmp_tables == [] and exps == [default], (revision, tmp_tables, exps, report)
        assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]  # no temporary file left


def test_a_dead_creators_temporary_file_is_cleared(tmp_path):
    """A creator killed mid-migration leaves only its temporary file (never a half-made mlflow.db); the next
    command, holding the lock, removes it and creates the store."""
    (tmp_path / ".mlflow.db.creating-4242").write_bytes(b"SQLite format 3\x00 half made")
    (tmp_path / ".mlflow.db.creating-4242-journal").write_bytes(b"x")
    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    assert [_state(tmp_path / "mlflow.db")[0]] == storelib.schema_heads()


def test_existing_store_is_checked_without_mlflow(tmp_path, good_db):
    """The check on an existing store is a read-only sqlite look: no MLflow import (compare's fast path)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(good_db, db)
    code = ("import sys, time; from mnist_exp.tracking import store; t = time.perf_counter(); "
            f"store.prepare('sqlite:///{db}', write=True); dt = time.perf_counter() - t; "
            "print('mlflow' in sys.modules, f'{dt * 1000:.1f} ms')")
    out = subprocess.run([str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False "), out
    print("check of an existing store:", out.split()[1], "ms")


# --- stores that cannot be used: one line, exit 2, nothing changed ----------------------------------------


def _damage(kind: str, db: Path, good: Path) -> str:
    """Write a store of this kind to ``db``; returns what the error must say."""
    def edit(sql: str):
        shutil.copy(good, db)
        con = sqlite3.connect(db)
        con.executescript(sql)
        con.close()

    older = storelib.schema_revisions()[storelib.schema_heads()[0]][0]
    if kind == "empty":
        db.write_bytes(b"")
        return " is an empty (0-byte) file, not an MLflow store"
    if kind == "not-sqlite":
        db.write_text("name,value\nthis is a CSV file, not a database\n")
        return " is not an SQLite database (corrupted?"
    if kind == "truncated":
        db.write_bytes(good.read_bytes()[:8192])
        return " is corrupted (database disk image is malformed"
    if kind == "half-migrated":
        edit("create table _alembic_tmp_tags (key varchar(250), value varchar(5000));")
        return " is half-migrated (table _alembic_tmp_tags left by an interrupted MLflow migration)"
    if kind == "no-revision":
        edit("delete from alembic_version;")
        return " has MLflow tables but no schema revision"
    if kind == "old-revision":
        edit(f"update alembic_version set version_num = '{older}';")
        return f": schema revision {older} is older than the installed MLflow"
    if kind == "new-revision":
        edit("update alembic_version set version_num = 'ffffeeee0000';")
        return ": schema revision ffffeeee0000 is unknown to the installed MLflow"
    if kind == "foreign-sqlite":
        con = sqlite3.connect(db)
        con.execute("create table notes (x)")
        con.commit()
        con.close()
        return " is an SQLite database without MLflow's tables"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "not-sqlite", "truncated", "half-migrated", "no-revision", "old-revision",
                                  "new-revision", "foreign-sqlite"])
def test_unusable_store_is_one_line_and_unchanged(kind, store, good_db, capsys):
    db = store / "mlruns" / "mlflow.db"
    expected = _damage(kind, db, good_db)
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    for argv in (["compare"], ["promote", "--dry-run"], ["promote"], ["sweep", "--name", "s", *TINY], ["train", *TINY]):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert err.startswith(f"mnist-exp {argv[0]}: error: {db}{expected}") and err.count("\n") == 1, err
    if kind in ("empty", "not-sqlite", "truncated", "half-migrated", "no-revision"):
        assert err.endswith("restore it from a backup, or move it away to start a new store there\n"), err
    if kind == "old-revision":
        assert f"back the file up, then run: mlflow db upgrade sqlite:///{db}" in err
    if kind == "new-revision":
        assert "upgrade mnist-exp and MLflow" in err
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]  # no lock, journal, artifacts or tuner folder


def test_store_path_is_a_folder(store, capsys):
    (store / "mlruns" / "mlflow.db").mkdir()
    assert main(["compare"]) == 2
    assert capsys.readouterr().err == (f"mnist-exp compare: error: {store / 'mlruns' / 'mlflow.db'} is a folder, not an "
                                       "MLflow sqlite store; point --tracking-uri at the store's file\n")


# --- read-only stores: commands that write refuse, compare still reads ------------------------------------


def _without_root_powers():
    """preexec_fn: as root, drop the capabilities that let root write anything (CAP_DAC_OVERRIDE,
    CAP_FOWNER) from the bounding set, so the command run next meets read-only files as any user does."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 3):  # CAP_DAC_OVERRIDE, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed: cannot make a read-only store for root")


def _one_sweep(db: Path) -> None:
    """A sweep `ro` with one finished trial, written through MLflow's client (what compare reads)."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exp = c.create_experiment("mnist-exp", artifact_location=(db.parent / "artifacts").as_uri())
    parent = c.create_run(exp, run_name="ro", tags={"mnist_exp.kind": "sweep", "mnist_exp.sweep": "ro",
                                                    "mnist_exp.objective": "max:val_accuracy"}).info.run_id
    trial = c.create_run(exp, tags={"mnist_exp.kind": "trial", "mnist_exp.sweep": "ro", "mnist_exp.trial_id": "00",
                                    "mlflow.parentRunId": parent}).info.run_id
    for k, v in {"objective": 0.75, "test_accuracy": 0.5}.items():
        c.log_metric(trial, k, v)
    c.set_terminated(trial, "FINISHED")
    c.set_terminated(parent, "FINISHED")


@pytest.mark.slow
def test_read_only_store(tmp_path, good_db):
    """Read-only file or folder: sweep, train and promote exit 2 naming the store, nothing changed;
    compare still prints the leaderboard. A missing store in a read-only folder is one line too."""
    cases = {}
    for name, file_mode, dir_mode in (("rofile", 0o444, 0o777), ("rodir", 0o666, 0o555)):
        (tmp_path / name / "mlruns").mkdir(parents=True)
        db = tmp_path / name / "mlruns" / "mlflow.db"
        shutil.copy(good_db, db)
        _one_sweep(db)
        db.chmod(file_mode)
        db.parent.chmod(dir_mode)
        cases[name] = db
    (tmp_path / "nostore" / "mlruns").mkdir(parents=True)
    (tmp_path / "nostore" / "mlruns").chmod(0o555)
    before = {n: (db.read_bytes(), db.stat().st_mtime_ns) for n, db in cases.items()}
    runs = [("rofile", ["sweep", "--name", "s", *TINY], 2, "file"), ("rofile", ["promote", "ro"], 2, "file"),
            ("rofile", ["compare"], 0, None), ("rodir", ["train", *TINY], 2, "folder"), ("rodir", ["compare"], 0, None),
            ("nostore", ["compare"], 2, None)]
    try:
        procs = []
        for name, argv, _, _ in runs:
            db = cases.get(name, tmp_path / name / "mlruns" / "mlflow.db")
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
            procs.append(subprocess.Popen([str(VENV_BIN / "mnist-exp"), *argv], cwd=tmp_path, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          preexec_fn=_without_root_powers if os.geteuid() == 0 else None))
        for (name, argv, code, what), p in zip(runs, procs):
            out, err = p.communicate(timeout=300)
            assert p.returncode == code, (argv, name, out[-2000:], err[-2000:])
            db = cases.get(name, tmp_path / name / "mlruns" / "mlflow.db")
            if name == "nostore":
                assert err == (f"mnist-exp compare: error: {db}: no store there and its folder is read-only, so none can "
                               "be created; point --tracking-uri at a writable place\n")
            elif code == 2:
                assert err == (f"mnist-exp {argv[0]}: error: {db}: the store's {what} is read-only and this command writes "
                               "to it; make it writable (compare can still read it)\n"), err
            else:
                assert "== sweep ro: 1 finished trial(s)" in out and "0.75" in out, (out, err)
        assert {n: (db.read_bytes(), db.stat().st_mtime_ns) for n, db in cases.items()} == before
        assert sorted(p.name for p in (tmp_path / "rodir" / "mlruns").iterdir()) == ["mlflow.db"]
        assert list((tmp_path / "nostore" / "mlruns").iterdir()) == []
    finally:  # pytest removes tmp_path
        for d in (tmp_path / "rodir" / "mlruns", tmp_path / "nostore" / "mlruns"):
            d.chmod(0o755)
