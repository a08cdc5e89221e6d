"""Where the tracking store is, and whether this command can use it.

Every command calls :func:`prepare` before any MLflow client opens the store:

- a local sqlite store is created once, under a lock, atomically (MLflow migrates a temporary file
  which is then linked into place): two processes opening a brand-new store at once would both run
  MLflow's migrations and could leave it half-migrated for good (``table _alembic_tmp_tags already exists``);
- an existing store is checked read-only, without importing MLflow (a few milliseconds): a 0-byte,
  corrupted, half-migrated, too old, too new or read-only store is one line naming the file and what
  to do (:class:`StoreError`, exit 2), and nothing is changed;
- a tracking server (http/https) must answer within seconds, and MLflow's own HTTP client then gets
  bounded retries with backoff (``server_store.py``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mnist_exp.runtime.errors import StoreError
from mnist_exp.tracking import relocation
from mnist_exp.tracking.server_store import check_server, set_http_limits

DB_NAME = "mlflow.db"
SQLITE_MAGIC = b"SQLite format 3\x00"

# --- where the store is ---------------------------------------------------------------------------


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (cwd) holding ``mlruns/``; else ``start``."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "mlruns").is_dir():
            return d
    return start


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then sqlite:///<project root>/mlruns/mlflow.db."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = project_root() / "mlruns"
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # a read-only folder: prepare() says so, naming the store
    return f"sqlite:///{store / DB_NAME}"


def is_remote(uri: str) -> bool:
    """A tracking server (every machine reaches the same store), as opposed to a store on this machine's disk."""
    return uri.startswith(("http://", "https://"))


def is_default(uri: str) -> bool:
    """The store mnist-exp finds by itself from the project root (no --tracking-uri needed)."""
    path = sqlite_path(uri)
    return path is not None and path.resolve().parent == project_root() / "mlruns"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a local store; None for a server (its own, proxied)."""
    return (local_store_dir(uri) / "artifacts").as_uri() if uri.startswith("sqlite:") else None


def ui_command(uri: str) -> str:
    """How to look at the runs of ``uri``."""
    if is_remote(uri):
        return f"open {uri}"
    return "mnist-exp ui" if is_default(uri) else f"mnist-exp ui --tracking-uri {uri}"


def local_store_dir(uri: str) -> Path:
    """Where files beside the store go (artifacts, tuner state): the sqlite file's folder or ./mlruns."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).resolve().parent
    return project_root() / "mlruns"


def sqlite_path(uri: str) -> Path | None:
    """The file of a local sqlite store URI (relative to the cwd, as SQLAlchemy reads it); None for others."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path).absolute()


def prepare(uri: str, write: bool, experiment: str = "mnist-exp") -> None:
    """Make ``uri`` safe for MLflow to open, or raise StoreError. ``write``: the command writes to it."""
    if uri.startswith(("http://", "https://")):
        check_server(uri, experiment)
        set_http_limits()
        return
    path = sqlite_path(uri)
    if path is not None:
        ensure_store(path, write)


# --- local sqlite stores ------------------------------------------------------------------------


def ensure_store(path: Path, write: bool) -> None:
    """Check an existing store; create a missing one atomically under a lock beside it."""
    path = Path(path).absolute()
    if os.path.lexists(path):
        check_store(path, write)
        return
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{path}: cannot create the store's folder ({e.strerror}); "
                         "point --tracking-uri at a writable place") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: no store there and its folder is read-only, so none can be created; "
                         "point --tracking-uri at a writable place")
    import fcntl

    with open(folder / f"{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        if os.path.lexists(path):  # another process created it while we waited
            check_store(path, write)
            return
        _create(path, write)


def _create(path: Path, write: bool) -> None:
    """Let MLflow create and migrate a temporary file beside ``path``, then move it into place.
    Called with the lock held, so any temporary file left there is a dead creator's."""
    for old in path.parent.glob(f".{path.name}.creating-*"):
        old.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
    tmp_uri = f"sqlite:///{tmp}"
    import logging

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)  # "Creating initial MLflow database tables...", alembic's steps
    try:
        # What MLflow does when a client first opens a new sqlite store (MLflow 3.17): create the
        # tables, run the alembic migrations to head, add the Default experiment. Its artifacts go
        # where `mnist-exp ui` and tracking.configure put them, beside the store.
        SqlAlchemyStore(tmp_uri, (path.parent / "artifacts").as_uri())
        engine = SqlAlchemyStore._engine_map.pop(tmp_uri, None)
        if engine is not None:
            engine.dispose()  # every connection closed before the rename
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        try:  # a link never replaces a store that a client other than mnist-exp created meanwhile
            os.link(tmp, path)
            tmp.unlink()
        except FileExistsError:
            tmp.unlink()
            check_store(path, write)
            return
        except OSError:  # a filesystem without hard links
            os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
        raise
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def check_store(path: Path, write: bool, moved_ok: bool = False) -> str:
    """Raise StoreError unless ``path`` is an MLflow store at the installed MLflow's schema head (and
    writable when ``write``), that records its own folder as its artifacts' home (unless ``moved_ok``:
    relocation.py). Read-only, no MLflow import. Returns the schema revision."""
    import sqlite3

    path = Path(path).absolute()
    uri = f"sqlite:///{path}"
    writable = _check_file(path, write)
    # A writable store is opened read-write (never created: mode=rw) so that SQLite rolls back a
    # journal left by a writer that was killed mid-transaction, as MLflow's own open would.
    mode = "rw" if writable else "ro"
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode={mode}", uri=True, timeout=30)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the store ({e})") from None
    try:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
        half = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        if half:
            raise StoreError(f"{path} is half-migrated (table {half[0]} left by an interrupted MLflow migration); "
                             "restore it from a backup, or move it away to start a new store there")
        row = db.execute("select version_num from alembic_version").fetchone() if "alembic_version" in tables else None
        if row is None:
            if "experiments" in tables:
                raise StoreError(f"{path} has MLflow tables but no schema revision (a migration that never "
                                 "finished); restore it from a backup, or move it away to start a new store there")
            raise StoreError(f"{path} is an SQLite database without MLflow's tables, not an MLflow store "
                             "(nothing was changed); point --tracking-uri at the store, or move the file away")
        db.execute("select count(*) from experiments").fetchone()  # reads a table: a damaged page shows here
        if not moved_ok:
            relocation.check(db, path)
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            raise StoreError(f"{path}: the store stayed locked by another process for 30 s; try again") from None
        raise StoreError(f"{path} is not a usable MLflow store ({e}; nothing was changed); "
                         "restore it from a backup, or move it away to start a new store there") from None
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is corrupted ({e}; nothing was changed); "
                         "restore it from a backup, or move it away to start a new store there") from None
    finally:
        db.close()
    revision, heads = row[0], schema_heads()
    if revision in heads:
        return revision
    if revision in schema_revisions():
        raise StoreError(f"{path}: schema revision {revision} is older than the installed MLflow {_mlflow_version()} "
                         f"needs ({', '.join(heads)}); back the file up, then run: mlflow db upgrade {uri}")
    raise StoreError(f"{path}: schema revision {revision} is unknown to the installed MLflow {_mlflow_version()} "
                     "(written by a newer MLflow?); upgrade mnist-exp and MLflow, or use the MLflow that wrote it")


def _check_file(path: Path, write: bool) -> bool:
    """The file checks before SQLite opens it: a readable SQLite file, writable when ``write``. Returns whether
    it is writable."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not an MLflow sqlite store; point --tracking-uri at the store's file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StoreError(f"{path}: cannot read the store ({e.strerror}); check its permissions") from None
    if not head:
        raise StoreError(f"{path} is an empty (0-byte) file, not an MLflow store (nothing was changed); "
                         "restore it from a backup, or move it away to start a new store there")
    if head != SQLITE_MAGIC:
        raise StoreError(f"{path} is not an SQLite database (corrupted?; nothing was changed); "
                         "restore it from a backup, or move it away to start a new store there")
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)
    if write and not writable:
        what = "file" if not os.access(path, os.W_OK) else "folder"
        raise StoreError(f"{path}: the store's {what} is read-only and this command writes to it; "
                         "make it writable (compare can still read it)")
    return writable


def _migrations_dir() -> Path:
    """The installed MLflow's alembic scripts, found without importing MLflow."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("MLflow is not installed; reinstall mnist-exp")
    return Path(spec.submodule_search_locations[0]) / "store" / "db_migrations" / "versions"


_graph: dict[str, list[str]] | None = None


def schema_revisions() -> dict[str, list[str]]:
    """revision -> its down revisions, read from the installed MLflow's migration scripts (~2 ms),
    so the known revisions never go stale when MLflow is upgraded."""
    global _graph
    if _graph is None:
        graph = {}
        for f in _migrations_dir().glob("*.py"):
            text = f.read_text(encoding="utf-8")
            rev = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M)
            if rev:
                down = re.search(r"^down_revision\s*=\s*(.*)$", text, re.M)
                graph[rev.group(1)] = re.findall(r"['\"](\w+)['\"]", down.group(1)) if down else []
        _graph = graph
    return _graph


def schema_heads() -> list[str]:
    """The revisions nothing migrates from: what MLflow migrates a store to (one, in MLflow 3.17)."""
    graph = schema_revisions()
    below = {d for downs in graph.values() for d in downs}
    return sorted(r for r in graph if r not in below)


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


# --- tracking servers -----------------------------------------------------------------------------


def relocate(uri: str) -> relocation.Relocation:
    """``mnist-exp relocate``: the local store at ``uri`` made to record its own folder (relocation.py), under the
    lock its creation takes, so no command creates or relocates it meanwhile."""
    import fcntl

    path = sqlite_path(uri)
    if path is None or not path.exists():
        raise StoreError(f"--tracking-uri {uri}: relocate works on a local sqlite store that exists "
                         "(a tracking server keeps its own locations)")
    check_store(path, write=True, moved_ok=True)
    with open(path.parent / f"{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return relocation.relocate(path)
