"""A team tracking server: MLflow on PostgreSQL, artifacts proxied by the server (``mnist-exp server DIR``).

Everything lives in DIR: ``pgdata/`` (a PostgreSQL cluster, made with Debian's initdb on first start), ``sock/``
(its unix socket), ``artifacts/`` (what clients upload through the server), ``pg.password``, ``pg.port`` and the
logs ``postgres.log`` and ``mlflow.log``. Clients need only ``http://HOST:PORT``: no shared folder, no database driver.

PostgreSQL listens on 127.0.0.1 only, for the MLflow server. Its TCP port takes the role ``mlflow`` (owner of the
database ``mlflow``, not a superuser) with the password in ``pg.password`` (scram-sha-256); the superuser ``postgres``
has no password and connects only through the unix socket (trust), whose folder only the cluster's owner can enter.
initdb and postgres refuse to run as root, so under root they run as the ``postgres`` system user.
"""

from __future__ import annotations

import fcntl
import glob
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from mnist_exp.runtime.errors import ConfigError, StoreError
from mnist_exp.runtime.ports import check_port_free

PG_BINARIES = "/usr/lib/postgresql/*/bin"  # Debian's layout (package postgresql)
DATABASE = ROLE = "mlflow"
SUPERUSER = "postgres"
PG_HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
# Database connections per MLflow server worker. MLflow's Flask app runs in AnyIO's default thread pool (40 threads
# per worker) and a request may hold two connections at once; with SQLAlchemy's default pool (5 + 10 overflow) 60
# writers at once starved it for good ("QueuePool limit of size 5 overflow 10 reached", every request failing after
# 30 s; 30 writers were fine). 2 x 40 per worker, and PostgreSQL's max_connections sized to match.
POOL_SIZE, POOL_OVERFLOW = 40, 40
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Server:
    """A started server: ``.uri`` for clients, ``.stop()`` (or leave the ``with`` block) stops both processes."""

    def __init__(self, folder: Path, host: str, port: int, pg_port: int, proc: subprocess.Popen, pg: _Postgres, lock):
        self.dir, self.host, self.port, self.pg_port, self.proc = folder, host, port, pg_port, proc
        self._pg, self._lock = pg, lock
        self.uri = f"http://{_address(host)}:{port}"

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


def start(folder, host: str = "127.0.0.1", port: int = 5000, workers: int = 2, pg_port: int | None = None) -> Server:
    """Start (creating on first use) the PostgreSQL cluster in ``folder`` and an MLflow server on host:port over it,
    and wait until ``/health`` answers. Restarting on the same folder keeps every run, model and artifact."""
    import importlib.util

    folder = Path(folder).absolute()
    if importlib.util.find_spec("psycopg") is None:  # MLflow's PostgreSQL driver, and ours for the role
        raise ConfigError("the PostgreSQL driver psycopg is not installed: pip install 'mnist-exp[server]'")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    check_port_free(host, port)  # else /health could answer from whatever holds the port
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    pg = proc = None
    try:
        _stop_orphans(folder)
        pg = _Postgres(folder)
        pg_port = pg.start(pg_port, max_connections=workers * (POOL_SIZE + POOL_OVERFLOW) + 20)
        password = pg.ensure_database()
        proc = _start_mlflow(folder, host, port, workers, pg_port, password)
        _wait_healthy(proc, f"http://{_address(host, connect=True)}:{port}/health", folder / "mlflow.log")
        return Server(folder, host, port, pg_port, proc, pg, lock)
    except BaseException:  # Ctrl-C during start too: leave nothing running
        if proc is not None:
            _kill_group(proc)
        if pg is not None:
            pg.stop()
        lock.close()
        raise


# --- PostgreSQL -------------------------------------------------------------------------------------


class _Postgres:
    def __init__(self, folder: Path):
        self.dir, self.data, self.sock = folder, folder / "pgdata", folder / "sock"
        self.log, self.port = folder / "postgres.log", None
        self.bin = _pg_bin(self.data)
        self.as_root = os.geteuid() == 0

    def run(self, *cmd: str, what: str) -> str:
        """A PostgreSQL program, as the postgres system user under root; its output, or StoreError with its tail."""
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if self.as_root:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
            raise StoreError(f"{self.data}: {what} failed (exit {p.returncode}): {tail}"[:600])
        return p.stdout

    def start(self, port: int | None, max_connections: int = 100) -> int:
        self.sock.mkdir(mode=0o700, exist_ok=True)
        self.data.mkdir(mode=0o700, exist_ok=True)
        if self.as_root:
            self._give_to_postgres()
        if not (self.data / "PG_VERSION").exists():
            # Trust on the socket only: its folder is the cluster owner's, mode 0700. TCP needs a password.
            self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth-local=trust",
                     "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale", what="initdb")
        self.port = port or _saved_port(self.dir / "pg.port")
        options = ("-k", str(self.sock), "-p", str(self.port), "-c", f"listen_addresses={PG_HOST}",
                   "-c", "unix_socket_permissions=0700", "-c", f"max_connections={max_connections}")
        options = " ".join(map(shlex.quote, options))  # pg_ctl hands -o to a shell
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(START_TIMEOUT_S)),
                 "-o", options, "start", what=f"pg_ctl start (log: {self.log})")
        (self.dir / "pg.port").write_text(f"{self.port}\n")
        return self.port

    def _give_to_postgres(self) -> None:
        import pwd

        try:
            user = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise ConfigError(f"{self.dir}: running as root, but there is no '{SUPERUSER}' system user to run "
                              "PostgreSQL as (initdb refuses root); install Debian's postgresql package") from None
        self.log.touch()
        for path in (self.data, self.sock, self.log):
            os.chown(path, user.pw_uid, user.pw_gid)
        probe = subprocess.run(["runuser", "-u", SUPERUSER, "--", "test", "-w", str(self.sock)], capture_output=True)
        if probe.returncode != 0:
            raise ConfigError(f"{self.dir}: the '{SUPERUSER}' user cannot reach this folder (a folder above it is "
                              "private, e.g. /root or pytest's temp); choose one it can enter, e.g. /srv/mlflow")

    def ensure_database(self) -> str:
        """Role ``mlflow`` (password from pg.password, made on first use) and its database. Idempotent."""
        import psycopg
        from psycopg import sql

        password = _password(self.dir / "pg.password")
        with psycopg.connect(host=str(self.sock), port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as db:
            exists = db.execute("select 1 from pg_roles where rolname = %s", (ROLE,)).fetchone()
            # ALTER on every start: pg.password is the truth (delete it to rotate the password).
            verb = "ALTER ROLE {} WITH LOGIN PASSWORD {}" if exists else "CREATE ROLE {} WITH LOGIN PASSWORD {}"
            db.execute(sql.SQL(verb).format(sql.Identifier(ROLE), sql.Literal(password)))
            if not db.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone():
                create = sql.SQL("CREATE DATABASE {} OWNER {}")
                db.execute(create.format(sql.Identifier(DATABASE), sql.Identifier(ROLE)))
        return password

    def running(self) -> bool:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        if self.as_root:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        return subprocess.run(argv, capture_output=True).returncode == 0

    def stop(self) -> None:
        if (self.data / "PG_VERSION").exists() and self.running():
            self.run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop", what="pg_ctl stop")


def _pg_bin(data: Path) -> Path:
    """The newest installed PostgreSQL's bin folder, or the one that made an existing cluster."""
    def version(b: str) -> int:
        name = Path(b).parent.name
        return int(name) if name.isdigit() else 0

    found = sorted((b for b in glob.glob(PG_BINARIES) if os.access(Path(b) / "initdb", os.X_OK)), key=version)
    if not found:
        raise ConfigError(f"no PostgreSQL server programs ({PG_BINARIES}/initdb); "
                          "install them: apt-get install postgresql")
    made_by = data / "PG_VERSION"
    if made_by.exists():
        want = made_by.read_text().strip()
        match = [b for b in found if Path(b).parent.name == want]
        if not match:
            raise ConfigError(f"{data} was made by PostgreSQL {want}, which is not installed (found "
                              f"{', '.join(Path(b).parent.name for b in found)}); install postgresql-{want}")
        return Path(match[0])
    return Path(found[-1])


def _saved_port(path: Path) -> int:
    """Last start's port if it is free (what pg_dump users saw), else a free one."""
    import socket

    try:
        port = int(path.read_text())
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as postgres binds: TIME_WAIT is no conflict
            s.bind((PG_HOST, port))
        return port
    except (OSError, ValueError):
        with socket.socket() as s:
            s.bind((PG_HOST, 0))
            return s.getsockname()[1]


def _password(path: Path) -> str:
    """The role's password: read, or made and written 0600 on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return password


# --- MLflow -------------------------------------------------------------------------------------------


def _start_mlflow(folder: Path, host: str, port: int, workers: int, pg_port: int, password: str) -> subprocess.Popen:
    (folder / "artifacts").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"postgresql+psycopg://{ROLE}@{PG_HOST}:{pg_port}/{DATABASE}",
           "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
           "--host", host, "--port", str(port), "--workers", str(workers), *_security_options(host, port)]
    # The password reaches libpq through the environment, not the command line (which `ps` shows everyone).
    # MLflow's job runner (GenAI scorers, prompt optimisation, trace jobs: nothing mnist-exp uses) is off unless the
    # user turns it on: its huey consumers (about 5 processes, 15 threads each) slowed start-up and once held up a
    # SIGTERM'ed server until SIGKILL 20 s later.
    # The pool: see POOL_SIZE. A user's own MLFLOW_SQLALCHEMYSTORE_* values win.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(POOL_SIZE),
           "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(POOL_OVERFLOW), **os.environ, "PGPASSWORD": password}
    with open(folder / "mlflow.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=folder, start_new_session=True)  # own group: Ctrl-C is ours to pass on
    (folder / "mlflow.pid").write_text(f"{proc.pid}\n")
    return proc


def _security_options(host: str, port: int) -> list[str]:
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
        options += ["--cors-allowed-origins", ",".join(f"http://{n}:{port}" for n in names)]
    return options


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise StoreError(f"the MLflow server exited ({proc.returncode}) before answering {url}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
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
        _Postgres(folder).stop()


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
