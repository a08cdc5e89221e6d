"""Where the tracking store is, and whether this command can use it.

Every command calls :func:`prepare` before any MLflow client opens the store:

- a local sqlite store is created once, under a lock, atomically (MLflow migrates a temporary file
  which is then linked into place): two processes opening a brand-new store at once would both run
  MLflow's migrations and could leave it half-migrated for good (``table _alembic_tmp_tags already exists``);
- an existing store is checked read-only, without importing MLflow (a few milliseconds): a 0-byte,
  corrupted, half-migrated, too old, too new or read-only store is one line naming the file and what
  to do (:class:`StoreError`, exit 2), and nothing is changed;
- a tracking server (http/https) must answer within seconds, and MLflow's own HTTP client then gets
  bounded retries with backoff (:data:`HTTP_LIMITS`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from mnist_exp.runtime.errors import StoreError

DB_NAME = "mlflow.db"
SQLITE_MAGIC = b"SQLite format 3\x00"

# MLflow's HTTP client, per request (MLflow 3.17 reads these at each call; urllib3 sleeps
# factor * 2**(n-1) s before retry n >= 2, plus up to `jitter` s): a server that refuses connections
# is retried for 2 + 4 + ... + 64 = 126 s (an outage of a minute or two is ridden through); one that
# never answers fails after at most 8 x 15 s + 126 s (+ 7 s jitter), about 4 min 15 s. MLflow's own
# defaults (7 retries, factor 2, timeout 120 s) took 248 s on a refused port, and would take up to
# 8 x 120 s + 244 s = 20 min on a silent one. Values the user set are kept.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int in MLflow 3.17
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
PREFLIGHT_S = 8.0  # check_server gives up within this long (the contract: one line within 15 s)
PREFLIGHT_ATTEMPT_S = 4.0  # one request's connect / read timeout


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


def check_store(path: Path, write: bool) -> str:
    """Raise StoreError unless ``path`` is an MLflow store at the installed MLflow's schema head (and
    writable when ``write``). Read-only, no MLflow import. Returns the schema revision."""
    import sqlite3

    path = Path(path).absolute()
    uri = f"sqlite:///{path}"
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


def set_http_limits() -> None:
    """Bounded retries and timeouts for MLflow's HTTP client, for the rest of this process (and the
    workers it starts); a value the user set is kept."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)


def check_server(uri: str, experiment: str = "mnist-exp", deadline_s: float = PREFLIGHT_S) -> None:
    """StoreError within ``deadline_s`` (+ one request) unless the tracking server at ``uri`` answers
    MLflow's REST API. Retries with backoff, so a server that is restarting gets a few seconds."""
    import http.client
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    url = (f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?"
           f"{urllib.parse.urlencode({'experiment_name': experiment})}")
    request = urllib.request.Request(url, headers=_auth_headers())
    context = _ssl_context() if uri.startswith("https://") else None
    start, delay, tries, waited = time.monotonic(), 0.5, 0, 0.0
    while True:
        tries += 1
        timeout = max(1.0, min(PREFLIGHT_ATTEMPT_S, deadline_s - (time.monotonic() - start)))
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                response.read()
            return
        except urllib.error.HTTPError as e:
            body = e.read(2000)
            if e.code < 500 and (e.code != 404 or b"error_code" in body):
                return  # it answers as MLflow does (401/403 are left to MLflow's client to report)
            if e.code < 500:
                raise StoreError(f"tracking server {uri} answered HTTP {e.code} to MLflow's REST API: not an MLflow "
                                 "tracking server? check --tracking-uri / MLFLOW_TRACKING_URI") from None
            why = f"answered HTTP {e.code}"
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
                waited = max(waited, timeout)
                why = f"did not answer within {waited:.0f} s"
            else:
                why = f"cannot be reached ({getattr(reason, 'strerror', None) or reason})"
        elapsed = time.monotonic() - start
        if elapsed + delay + 1.0 > deadline_s:  # no time left for a try worth making
            raise StoreError(f"tracking server {uri} {why} ({tries} tries in {elapsed:.0f} s); start it, or check "
                             "--tracking-uri / MLFLOW_TRACKING_URI") from None
        time.sleep(delay)
        delay = min(delay * 2, 4.0)


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client would send (basic auth or a bearer token from the environment)."""
    import base64

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.standard_b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _ssl_context():
    """TLS as MLflow's client would verify it (MLFLOW_TRACKING_INSECURE_TLS, *_CERT_PATH)."""
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        context.load_cert_chain(client_cert)
    return context


# Messages of MLflow 3.17's client when its retries are spent (rest_utils.http_request wraps the requests
# error in an MlflowException, without `from`, so the cause may only be in the message).
_UNAVAILABLE_TEXT = re.compile(
    r"Max retries exceeded|failed with timeout exception|Connection refused|Connection reset|Connection aborted"
    r"|Read timed out|RemoteDisconnected|Failed to establish a new connection|too many 5\d\d error responses"
    r"|failed with error code 5\d\d")


def is_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` says the tracking server could not be reached, timed out or answered 5xx after
    MLflow's retries: a sweep should stop (finished trials kept) rather than fail the trial."""
    import requests
    import urllib3

    # Not the builtin ConnectionError / TimeoutError: a BrokenPipeError on a closed stdout is no outage,
    # and MLflow's client never lets a bare socket error out unwrapped.
    network = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
               urllib3.exceptions.MaxRetryError, urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError)
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 20:
        seen.add(id(e))
        if isinstance(e, network):
            return True
        if type(e).__module__.startswith("mlflow") and _UNAVAILABLE_TEXT.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False
