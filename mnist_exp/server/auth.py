"""Authentication of a team server: MLflow's basic-auth app, provided with what it needs.

On every start of ``mnist-exp server DIR`` (unless ``--no-auth``) the app gets:

- its configuration, ``DIR/auth.ini`` (no secret in it): users and permissions in the cluster's ``mlflow_auth``
  database, ``default_permission = READ`` (every signed-in user may read every run and model; writing needs a
  grant, ``mnist-exp server-users``), the admin's name;
- a persistent secret key for its CSRF protection, ``DIR/secret_key`` (the same for every worker and restart);
- on the first start with auth, the admin's password: generated, written to ``DIR/credentials`` in MLflow's own
  credentials format (0600) and handed to the app through its environment variable, never a command line. Once
  the admin exists the app ignores it; ``mnist-exp server-users DIR passwd admin`` rotates it.

A folder made by a release without auth gets it on its next start with every run and model kept.
"""

from __future__ import annotations

import configparser
import io
from pathlib import Path

from mnist_exp.server.files import new_password, private_secret, read_credentials, write_credentials, write_private

ADMIN = "admin"
CREDENTIALS = "credentials"  # DIR/credentials: the admin's, in MLflow's format
CONFIG, SECRET_KEY = "auth.ini", "secret_key"
DEFAULT_PERMISSION = "READ"
# Each worker remembers a checked password this long: MLflow hashes it (PBKDF2) on every request otherwise, which a
# sweep's stream of metric writes pays for in CPU on the server. A removed user or a rotated password is refused by
# every worker within this long.
AUTH_CACHE_S = 10


def admin_credentials(folder: Path) -> tuple[str, str]:
    """The admin's (username, password) from DIR/credentials."""
    return read_credentials(folder / CREDENTIALS)


def prepare(folder: Path, database_url: str) -> tuple[dict[str, str], bool]:
    """Config, secret key and admin password for the auth app; (environment for ``mlflow server``, whether the
    admin's credentials file was made now)."""
    made = not (folder / CREDENTIALS).exists()
    if made:
        write_credentials(folder / CREDENTIALS, ADMIN, new_password())
    _, password = admin_credentials(folder)
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": database_url,
        "admin_username": ADMIN,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": str(AUTH_CACHE_S),
    }
    text = io.StringIO()
    config.write(text)
    write_private(folder / CONFIG, text.getvalue())
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(folder / CONFIG),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": private_secret(folder / SECRET_KEY),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,  # read only while the admin does not exist yet
    }
    return env, made
