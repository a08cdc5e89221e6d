"""The commands about servers: ``ui`` (the MLflow UI on the store), ``server`` (a team tracking server) and
``server-users`` (its users). Heavy imports stay inside the functions, as in the rest of the command line."""

from __future__ import annotations

import os
import sys

from mnist_exp.cli.options import common as _common
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.server.users import LEVELS as USER_LEVELS


def server_parsers(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the store")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port of the UI (default 5000)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1: quick to start)")
    p.add_argument("--no-browser", action="store_true", help="print the address only (the default where there is no display)")
    _common(p)

    p = sub.add_parser("server", help="a team MLflow tracking server on PostgreSQL, artifacts proxied (all kept in DIR)")
    p.add_argument("dir", metavar="DIR", help="folder for the PostgreSQL cluster, artifacts and logs (made on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, for other machines)")
    p.add_argument("--port", type=int, default=5000, help="port of the tracking server (default 5000)")
    p.add_argument("--workers", type=int, default=2, help="MLflow server worker processes (default 2)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (chain); with --tls-key")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (keep it 0600)")
    p.add_argument("--no-auth", action="store_true",
                   help="no sign-in (MLflow's basic-auth app is on by default); loopback addresses only")

    p = sub.add_parser("server-users", help="users of a team server and what each may do (run on the server's machine)")
    p.add_argument("dir", metavar="DIR", help="the server's folder (its admin credentials are DIR/credentials)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                               help="add, grant, passwd, remove or list (each with its own --help)")
    a = actions.add_parser("add", help="a new user; their password is written to DIR/users/NAME (0600), never shown")
    a.add_argument("name", help="the user's name")
    a.add_argument("--level", default="read", choices=USER_LEVELS, help="what they may do (default read)")
    a = actions.add_parser("grant", help="set a user's level: read, run (sweeps), promote (move aliases) or admin")
    a.add_argument("name", help="the user's name")
    a.add_argument("level", choices=USER_LEVELS, help="their new level")
    a = actions.add_parser("passwd", help="a new password for a user (admin: DIR/credentials), written to their file")
    a.add_argument("name", help="the user's name")
    a = actions.add_parser("remove", help="delete a user")
    a.add_argument("name", help="the user's name")
    actions.add_parser("list", help="every user and their level")


def _ui_on_server(args, uri: str) -> int:
    """A tracking server serves its own UI: write the saved view there and print its addresses; start nothing
    (``mlflow ui`` cannot take an http store: it exited with a traceback after printing an address never served)."""
    from mnist_exp import api  # here, not at the top: --help stays instant
    from mnist_exp.tracking import ui_view

    api.open_store(args.tracking_uri, write=False, command="ui")
    runs, charts = ui_view.for_ui(uri, uri.rstrip("/"))
    print(f"MLflow UI of the tracking server {uri} (it serves its own; nothing started here)", flush=True)
    print(f"  sweeps, trials, objective and hyperparameters: {runs}", flush=True)
    if charts:
        print(f"  charts (expand a sweep to chart its trials): {charts}", flush=True)
    if not args.no_browser and ui_view.can_open_browser():
        import webbrowser

        webbrowser.open(runs)
    return 0


def cmd_ui(args) -> int:
    from mnist_exp.tracking import store

    if store.is_remote(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""):
        return _ui_on_server(args, args.tracking_uri or os.environ["MLFLOW_TRACKING_URI"])
    from mnist_exp.runtime.ports import check_port_free

    check_port_free(args.host, args.port)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    from mnist_exp import api

    uri = api.open_store(args.tracking_uri, write=False, command="ui")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers)]
    if store.artifact_root(uri):
        cmd += ["--default-artifact-root", store.artifact_root(uri)]
    from mnist_exp.tracking import ui_view

    # A wildcard listens everywhere; the address to open is this machine's.
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, f"[{args.host}]" if ":" in args.host else args.host)
    base = f"http://{host}:{args.port}"
    runs, charts = ui_view.for_ui(uri, base)
    print(f"MLflow UI on {base} (store {uri}); Ctrl-C stops it", flush=True)
    print(f"  sweeps, trials, objective and hyperparameters: {runs}", flush=True)
    if charts:
        print(f"  charts (expand a sweep to chart its trials): {charts}", flush=True)
    if not args.no_browser and ui_view.can_open_browser():
        ui_view.open_when_up(runs, f"{base}/health")
    from mnist_exp.server.launch import JOB_RUNNER_OFF

    for key, value in JOB_RUNNER_OFF.items():  # a value the user set is kept
        os.environ.setdefault(key, value)
    os.execv(sys.executable, cmd)
    return 0


def cmd_server(args) -> int:
    import socket
    import time

    from mnist_exp import server
    from mnist_exp.runtime import signals

    t0 = time.monotonic()
    with signals.handled():  # Ctrl-C / SIGTERM / SIGHUP: stop both servers, exit 0
        try:
            srv = server.start(args.dir, host=args.host, port=args.port, workers=args.workers,
                               auth_on=not args.no_auth, tls_cert=args.tls_cert, tls_key=args.tls_key)
        except KeyboardInterrupt:
            print("mnist-exp server: interrupted while starting; nothing left running", file=sys.stderr)
            return 130
        try:
            print(f"MLflow tracking server on {srv.uri} (PostgreSQL in {srv.dir}/pgdata, port {srv.pg_port}; "
                  f"artifacts in {srv.dir}/artifacts), up in {time.monotonic() - t0:.1f} s; Ctrl-C stops it", flush=True)
            if srv.auth:
                made = "made now; " if srv.credentials_made else ""
                print(f"auth on: the admin's credentials are in {srv.credentials} ({made}mode 0600, MLflow's format: copy "
                      f"to ~/.mlflow/credentials); users: mnist-exp server-users {srv.dir} add NAME", flush=True)
            else:
                print("auth off (--no-auth): anyone who can reach this address may read, write and promote", flush=True)
            print(f"export MLFLOW_TRACKING_URI={srv.uri}", flush=True)
            scheme = srv.uri.partition(":")[0]
            if args.host not in server.LOOPBACK:
                print(f"  from other machines: export MLFLOW_TRACKING_URI={scheme}://{socket.getfqdn()}:{srv.port}",
                      flush=True)
            if scheme == "https":
                print("  clients of a private CA: export MLFLOW_TRACKING_SERVER_CERT_PATH=/path/to/ca.pem", flush=True)
            code = srv.wait()
            print(f"mnist-exp server: the MLflow server exited ({code}); see {srv.dir}/mlflow.log", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("mnist-exp server: stopping", flush=True)
            return 0
        finally:
            with signals.deferred():  # a signal while stopping does not cut the stop short (a second one does)
                srv.stop()


def cmd_server_users(args) -> int:
    from mnist_exp.server.users import Team

    with Team(args.dir) as team:
        if args.action == "list":
            for name, level in team.users():
                print(f"{name}\t{level}")
        elif args.action == "add":
            path = team.add(args.name, args.level)
            print(f"user {args.name} added ({args.level}); their credentials: {path} (give them this file for "
                  "~/.mlflow/credentials)")
        elif args.action == "grant":
            team.grant(args.name, args.level)
            print(f"user {args.name}: {args.level}")
        elif args.action == "passwd":
            print(f"user {args.name}: new password written to {team.passwd(args.name)}")
        elif args.action == "remove":
            team.remove(args.name)
            print(f"user {args.name} removed")
    return 0
