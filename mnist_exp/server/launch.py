"""Start and stop a team server: PostgreSQL, then MLflow's server over it (``mnist-exp server DIR``).

Everything lives in DIR: ``pgdata/`` (the PostgreSQL cluster, postgres.py), ``sock/`` (its unix socket),
``artifacts/`` (what clients upload through the server), the secrets (``pg.password``, ``credentials``,
``secret_key``: files.py, auth.py), ``pg.port``, ``server.url`` (where it was last served, for ``server-users``)
and the logs ``postgres.log`` and ``mlflow.log``. Clients need only ``http://HOST:PORT`` and, with auth (the
default), a user's credentials: no shared folder, no database driver.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mnist_exp.runtime.errors import ConfigError, StoreError
from mnist_exp.runtime.ports import check_port_free
from mnist_exp.server import auth
from mnist_exp.server.postgres import AUTH_DATABASE, DATABASE, START_TIMEOUT_S, Postgres

# Database connections per MLflow server worker. MLflow's Flask app runs in AnyIO's default thread pool (40 threads
# per worker) and a request may hold two connections at once; with SQLAlchemy's default pool (5 + 10 overflow) 60
# writers at once starved it for good ("QueuePool limit of size 5 overflow 10 reached", every request failing after
# 30 s; 30 writers were fine). 2 x 40 per worker, and PostgreSQL's max_connections sized to match.
POOL_SIZE, POOL_OVERFLOW = 40, 40
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRACEFUL_S = 5  # uvicorn's --timeout-graceful-shutdown
# MLflow's job runner (GenAI scorers, prompt optimisation, trace jobs: nothing mnist-exp uses), off for every MLflow
# server mnist-exp starts (``server`` and ``ui``) unless the user turns it on: its consumer processes cost more than
# the server itself (docs/team-server.md) and can hold up a server's stop.
JOB_RUNNER_OFF = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class Server:
    """A started server: ``.uri`` for clients, ``.stop()`` (or leave the ``with`` block) stops both processes."""

    def __init__(self, folder: Path, host: str, port: int, pg: Postgres, proc: subprocess.Popen, lock, auth_on: bool,
                 credentials_made: bool = False, scheme: str = "http"):
        self.dir, self.host, self.port, self.pg_port, self.proc = folder, host, port, pg.port, proc
        self._pg, self._lock = pg, lock
        self.auth, self.credentials_made = auth_on, credentials_made
        self.uri = f"{scheme}://{_address(host)}:{port}"
        self.credentials = folder / auth.CREDENTIALS if auth_on else None

    def wait(self) -> int:
        """Until the MLflow server exits (it should not); its exit code."""
        return self.proc.wait()

    def stop(self) -> None:
        """The MLflow server (its whole process group), then PostgreSQL (``pg_ctl stop -m fast``). Idempotent."""
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None
            (self.dir / "mlflow.pid").unlink(missing_ok=True)
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(folder, host: str = "127.0.0.1", port: int = 5000, workers: int = 2, pg_port: int | None = None,
          auth_on: bool = True, tls_cert: str | None = None, tls_key: str | None = None) -> Server:
    """Start (creating on first use) the PostgreSQL cluster in ``folder`` and an MLflow server on host:port over it,
    with MLflow's basic-auth app unless ``auth_on`` is False (loopback only), over HTTPS with ``tls_cert`` and
    ``tls_key`` (PEM files), and wait until ``/health`` answers. Restarting on the same folder keeps every run,
    model, artifact, user and permission."""
    import importlib.util

    folder = Path(folder).absolute()
    if importlib.util.find_spec("psycopg") is None:  # MLflow's PostgreSQL driver, and ours for the role
        raise ConfigError("the PostgreSQL driver psycopg is not installed: pip install 'mnist-exp[server]'")
    if auth_on and importlib.util.find_spec("flask_wtf") is None:  # the auth app's CSRF protection
        raise ConfigError("MLflow's auth app needs Flask-WTF, which is not installed: pip install 'mnist-exp[server]'")
    if not auth_on and host not in LOOPBACK:
        raise ConfigError(f"--host {host}: a server other machines can reach needs authentication; drop --no-auth "
                          "(or serve on 127.0.0.1)")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    tls = _tls_files(tls_cert, tls_key)
    scheme = "https" if tls else "http"
    check_port_free(host, port)  # else /health could answer from whatever holds the port
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    pg = proc = None
    try:
        _stop_orphans(folder)
        pg = Postgres(folder)
        pg.start(pg_port, max_connections=workers * (POOL_SIZE + POOL_OVERFLOW) + 20)
        env = {"PGPASSWORD": pg.ensure_database()}
        made = False
        if auth_on:
            auth_env, made = auth.prepare(folder, pg.url(AUTH_DATABASE))
            env.update(auth_env)
        proc = _start_mlflow(folder, host, port, workers, pg.url(DATABASE), env, auth_on, tls)
        local = f"{scheme}://{_address(host, connect=True)}:{port}"
        _wait_healthy(proc, f"{local}/health", folder / "mlflow.log")
        srv = Server(folder, host, port, pg, proc, lock, auth_on, made, scheme)
        (folder / "server.url").write_text(f"{local}\n")
        return srv
    except BaseException:  # Ctrl-C during start too: leave nothing running
        if proc is not None:
            _kill_group(proc)
        if pg is not None:
            pg.stop()
        lock.close()
        raise


# --- MLflow -------------------------------------------------------------------------------------------


def _start_mlflow(folder: Path, host: str, port: int, workers: int, store_url: str, secrets: dict[str, str],
                  auth_on: bool, tls: tuple[Path, Path] | None) -> subprocess.Popen:
    import shlex

    (folder / "artifacts").mkdir(exist_ok=True)
    scheme = "https" if tls else "http"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_url,
           "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
           "--host", host, "--port", str(port), "--workers", str(workers), *_security_options(host, port, scheme)]
    if auth_on:
        cmd += ["--app-name", "basic-auth"]
    # A client's idle kept-alive HTTPS connection held uvicorn's graceful shutdown until SIGKILL (20 s): 5 s is enough
    # for requests in flight. uvicorn serves HTTPS itself; the key file's path is no secret (its mode keeps it one).
    uvicorn = f"--timeout-graceful-shutdown {GRACEFUL_S}"
    if tls:
        uvicorn += f" --ssl-certfile {shlex.quote(str(tls[0]))} --ssl-keyfile {shlex.quote(str(tls[1]))}"
    cmd += ["--uvicorn-opts", uvicorn]
    # Secrets (the database password, the auth app's key and admin password) reach the server through its
    # environment, never the command line (which `ps` shows everyone).
    # The job runner: see JOB_RUNNER_OFF; the pool: see POOL_SIZE. A user's own values win.
    env = {**JOB_RUNNER_OFF, "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(POOL_SIZE),
           "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(POOL_OVERFLOW), **os.environ, **secrets}
    with open(folder / "mlflow.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=folder, start_new_session=True)  # own group: Ctrl-C is ours to pass on
    (folder / "mlflow.pid").write_text(f"{proc.pid}\n")
    return proc


def _tls_files(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    """(certificate, key) as absolute paths, checked readable; None for plain HTTP."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("--tls-cert and --tls-key: give both (PEM files: the certificate chain and its private key)")
    out = []
    for flag, value in (("--tls-cert", cert), ("--tls-key", key)):
        path = Path(value).absolute()
        try:
            head = path.read_text(errors="replace")[:200]
        except OSError as e:
            raise ConfigError(f"{flag} {value}: cannot be read ({e.strerror})") from None
        if "-----BEGIN" not in head:
            raise ConfigError(f"{flag} {value}: not a PEM file (no -----BEGIN line)")
        out.append(path)
    return out[0], out[1]


def _security_options(host: str, port: int, scheme: str = "http") -> list[str]:
    """MLflow 3.17 answers only Host headers of loopback and private addresses (DNS-rebinding guard), and refuses
    the UI's own writes from any other origin. Bound elsewhere, add the names clients will use: the address, this
    machine's names and, on a wildcard, its interface addresses. MLFLOW_SERVER_ALLOWED_HOSTS / _CORS_ALLOWED_ORIGINS,
    when set, are MLflow's to apply as given."""
    if host in LOOPBACK:
        return []
    import socket

    from mlflow.server.security_utils import get_default_allowed_hosts

    names = [host, socket.gethostname(), socket.getfqdn()]
    if host in ("0.0.0.0", "::"):
        import psutil

        names += [a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
                  if a.family in (socket.AF_INET, socket.AF_INET6)]
    names = list(dict.fromkeys(f"[{n}]" if ":" in n else n for n in names if n))
    options = []
    if not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        hosts = get_default_allowed_hosts() + [h for n in names for h in (n, f"{n}:{port}")]
        options += ["--allowed-hosts", ",".join(dict.fromkeys(hosts))]
    if not os.environ.get("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"):
        options += ["--cors-allowed-origins", ",".join(f"{scheme}://{n}:{port}" for n in names)]
    return options


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    import ssl
    import urllib.request

    # Our own child on this machine: its certificate need not name the address we probe it on.
    context = ssl._create_unverified_context() if url.startswith("https://") else None
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise StoreError(f"the MLflow server exited ({proc.returncode}) before answering {url}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.status == 200 and proc.poll() is None:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StoreError(f"the MLflow server did not answer {url} within {START_TIMEOUT_S:.0f} s: {_tail(log)}")
        time.sleep(0.25)


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return (" | ".join(text[-lines:]) + f" (log: {log})")[-800:]


# --- one server per folder --------------------------------------------------------------------------


def _lock(folder: Path):
    """An exclusive flock on DIR/server.lock for as long as the server runs (the kernel drops it if we die)."""
    f = open(folder / "server.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise ConfigError(f"{folder} is served already (mnist-exp server pid {holder}); stop that one first") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _stop_orphans(folder: Path) -> None:
    """With the lock ours, a server left running by a killed ``mnist-exp server`` on this folder is stopped."""
    pid_file = folder / "mlflow.pid"
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"mlflow" in cmdline and b"server" in cmdline:
            _kill_group(pid)  # not our child: init reaps it
    except (OSError, ValueError):
        pass
    pid_file.unlink(missing_ok=True)
    if (folder / "pgdata" / "PG_VERSION").exists():
        Postgres(folder).stop()


def _kill_group(proc: subprocess.Popen | int, grace_s: float = 20.0) -> None:
    """SIGTERM to the process group (server and workers), SIGKILL to what is left after ``grace_s``."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not isinstance(proc, int):
            proc.poll()  # reap our child: a zombie still counts as a member of the group
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not isinstance(proc, int):
        proc.wait()


def _address(host: str, connect: bool = False) -> str:
    """host as a URL host: a wildcard becomes this machine's loopback address to connect to."""
    if connect or host in ("0.0.0.0", "::"):
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host
