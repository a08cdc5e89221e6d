"""The PostgreSQL cluster of a team server (``DIR/pgdata``), made with Debian's initdb on first start.

It listens on 127.0.0.1 only, for the MLflow server. Its TCP port takes the role ``mlflow`` (owner of the databases
``mlflow``, the tracking store, and ``mlflow_auth``, the auth app's users and permissions; not a superuser) with the
password in ``pg.password`` (scram-sha-256); the superuser ``postgres`` has no password and connects only through
the unix socket (trust), whose folder only the cluster's owner can enter. initdb and postgres refuse to run as root,
so under root they run as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
from pathlib import Path

from mnist_exp.runtime.errors import ConfigError, StoreError
from mnist_exp.server.files import private_secret

PG_BINARIES = "/usr/lib/postgresql/*/bin"  # Debian's layout (package postgresql)
DATABASE = ROLE = "mlflow"
AUTH_DATABASE = "mlflow_auth"
SUPERUSER = "postgres"
PG_HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0


class Postgres:
    """The cluster in DIR/pgdata: started on 127.0.0.1 and the unix socket in DIR/sock, stopped with pg_ctl."""

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
        """Role ``mlflow`` (password from pg.password, made on first use), its database and the auth app's
        (``mlflow_auth``: users and permissions). Idempotent; returns the role's password."""
        import psycopg
        from psycopg import sql

        password = private_secret(self.dir / "pg.password")
        with psycopg.connect(host=str(self.sock), port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as db:
            exists = db.execute("select 1 from pg_roles where rolname = %s", (ROLE,)).fetchone()
            # ALTER on every start: pg.password is the truth (delete it to rotate the password).
            verb = "ALTER ROLE {} WITH LOGIN PASSWORD {}" if exists else "CREATE ROLE {} WITH LOGIN PASSWORD {}"
            db.execute(sql.SQL(verb).format(sql.Identifier(ROLE), sql.Literal(password)))
            for name in (DATABASE, AUTH_DATABASE):
                if not db.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
                    create = sql.SQL("CREATE DATABASE {} OWNER {}")
                    db.execute(create.format(sql.Identifier(name), sql.Identifier(ROLE)))
        return password

    def url(self, database: str) -> str:
        """SQLAlchemy URL of a database over TCP as the role; its password reaches libpq as PGPASSWORD."""
        return f"postgresql+psycopg://{ROLE}@{PG_HOST}:{self.port}/{database}"

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
