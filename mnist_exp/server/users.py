"""Users and what each may do on a team server with auth (``mnist-exp server-users DIR ...``).

Run on the server's machine by whoever may read DIR: it signs in as the admin with ``DIR/credentials`` and talks
to the running server (``DIR/server.url``) through MLflow's auth API. A user's password is generated here and
written only to ``DIR/users/NAME`` in MLflow's credentials format (0600), to be handed to that user for their
``~/.mlflow/credentials``; it is never printed.

Levels, each including the one before (MLflow grants, server-wide):

- ``read``: sign in, read every run and model: compare, predict, the UI (the server's default permission);
- ``run``: sweeps and workers (MANAGE on every experiment); on the team roster, so the sweep leases of others
  that died can be taken over (tracking/team.py);
- ``promote``: move a model's alias (MANAGE on every registered model);
- ``admin``: MLflow's admin: everything, users included.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mnist_exp.runtime.errors import ConfigError
from mnist_exp.server import auth
from mnist_exp.server.files import new_password, write_credentials
from mnist_exp.tracking import keys

LEVELS = ("read", "run", "promote", "admin")
GRANTS = {  # level -> {MLflow resource type: permission on "*"}
    "read": {},
    "run": {"experiment": "MANAGE"},
    "promote": {"experiment": "MANAGE", "registered_model": "MANAGE"},
    "admin": {"experiment": "MANAGE", "registered_model": "MANAGE"},
}
LEASE_PREFIX = "mnist-exp.sweep-lease."  # tracking/sweep_lock.py RegistrySweepLock.PREFIX
ROSTER_DESCRIPTION = ("The team roster of this server, kept by `mnist-exp server-users`: one tag per user who may run "
                      "sweeps, with their level. Not a model.")


class Team:
    """The admin's view of a running server's users; ``with Team(folder) as team: team.add("ana", "run")``."""

    def __init__(self, folder):
        self.dir = Path(folder).absolute()
        try:
            self.uri = (self.dir / "server.url").read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"{self.dir}: not a server folder (no server.url); start it: mnist-exp server DIR") from None
        if not (self.dir / auth.CREDENTIALS).exists():
            raise ConfigError(f"{self.dir}: its server runs without auth (--no-auth): there are no users to manage")
        self.admin, password = auth.admin_credentials(self.dir)
        self._env = {"MLFLOW_TRACKING_USERNAME": self.admin, "MLFLOW_TRACKING_PASSWORD": password}
        if self.uri.startswith("https://") and not os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            # server.url is this machine's own loopback address of the server: its certificate need not name it
            self._env["MLFLOW_TRACKING_INSECURE_TLS"] = "true"
        self._saved: dict = {}

    def __enter__(self) -> Team:
        from mlflow import MlflowClient

        from mnist_exp.tracking import server_store, team

        self._saved = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)
        server_store.check_server(self.uri)
        self.auth, self.client = team.auth_client(self.uri), MlflowClient(self.uri, registry_uri=self.uri)
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def credentials_file(self, name: str) -> Path:
        return self.dir / auth.CREDENTIALS if name == self.admin else self.dir / "users" / name

    # --- commands -------------------------------------------------------------------------------------

    def add(self, name: str, level: str = "read") -> Path:
        _check_level(level)
        if self._exists(name):
            raise ConfigError(f"user {name} exists already (a new password: mnist-exp server-users DIR passwd {name})")
        password = new_password()
        path = self.credentials_file(name)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        staged = path.with_name(f".{path.name}.new")
        write_credentials(staged, name, password)  # the file appears only for a user the server has
        self.auth.create_user(name, password)
        staged.replace(path)
        self.grant(name, level)
        return path

    def remove(self, name: str) -> None:
        if name == self.admin:
            raise ConfigError(f"user {name}: the admin of DIR/credentials cannot be removed")
        self._require(name)
        self._roster_set(name, None)
        self.auth.delete_user(name)
        self.credentials_file(name).unlink(missing_ok=True)

    def grant(self, name: str, level: str) -> None:
        """Set ``name``'s level: its server-wide grants, admin flag and place on the roster."""
        from mlflow.exceptions import MlflowException

        _check_level(level)
        self._require(name)
        if name == self.admin and level != "admin":
            raise ConfigError(f"user {name}: the admin of DIR/credentials stays admin")
        for resource in ("experiment", "registered_model"):
            permission = GRANTS[level].get(resource)
            if permission:
                self.auth.grant_user_permission(name, resource, "*", permission)
            else:
                with contextlib.suppress(MlflowException):  # nothing granted: nothing to revoke
                    self.auth.revoke_user_permission(name, resource, "*")
        self.auth.update_user_admin(name, level == "admin")
        self._roster_set(name, None if level == "read" else level)
        if level != "read":  # leases taken before this user joined: theirs to take over too
            from mnist_exp.tracking import team

            for lease in self.client.search_registered_models(f"name LIKE '{LEASE_PREFIX}%'"):
                team.share(self.client, self.uri, lease.name, users=[name])

    def passwd(self, name: str) -> Path:
        """A new password for ``name``: set on the server, then written to its credentials file."""
        self._require(name)
        password = new_password()
        path = self.credentials_file(name)
        staged = path.with_name(f".{path.name}.new")
        write_credentials(staged, name, password)  # kept if we die between the two steps: the new password
        current = self._env["MLFLOW_TRACKING_PASSWORD"] if name == self.admin else None  # MLflow asks for one's own
        self.auth.update_user_password(name, password, current_password=current)
        staged.replace(path)
        if name == self.admin:
            self._env["MLFLOW_TRACKING_PASSWORD"] = password
            os.environ.update(self._env)
        return path

    def users(self) -> list[tuple[str, str]]:
        """(name, level) of every user, sorted by name."""
        from mlflow.server.auth.routes import LIST_USERS

        found = self.auth._request(LIST_USERS, "GET").get("users", [])
        roster = self._roster()
        out = []
        for u in found:
            name = u["username"]
            out.append((name, "admin" if u.get("is_admin") else roster.get(name, "read")))
        return sorted(out)

    # --- helpers -------------------------------------------------------------------------------------

    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.auth.get_user(name)
            return True
        except MlflowException:
            return False

    def _require(self, name: str) -> None:
        if not self._exists(name):
            raise ConfigError(f"user {name}: no such user (add it: mnist-exp server-users DIR add {name})")

    def _roster(self) -> dict[str, str]:
        from mnist_exp.tracking import team

        return team.roster(self.client)

    def _roster_set(self, name: str, level: str | None) -> None:
        from mlflow.exceptions import MlflowException

        key = keys.TAG_TEAM_PREFIX + name
        if level is None:
            with contextlib.suppress(MlflowException):
                self.client.delete_registered_model_tag(keys.TEAM_MODEL, key)
            return
        try:
            self.client.create_registered_model(keys.TEAM_MODEL, description=ROSTER_DESCRIPTION)
        except MlflowException as e:
            if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        self.client.set_registered_model_tag(keys.TEAM_MODEL, key, level)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ConfigError(f"level {level!r}: must be one of {', '.join(LEVELS)}")
