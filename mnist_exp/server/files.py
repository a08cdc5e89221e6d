"""Secrets a team server keeps in its folder, each in a file only its owner can read (mode 0600).

MLflow's client credentials format is used for every user's password, so a file written here can be copied to
``~/.mlflow/credentials`` as it is::

    [mlflow]
    mlflow_tracking_username = admin
    mlflow_tracking_password = ...
"""

from __future__ import annotations

import configparser
import os
import secrets
from pathlib import Path

from mnist_exp.runtime.errors import ConfigError

SECTION = "mlflow"
USERNAME_KEY, PASSWORD_KEY = "mlflow_tracking_username", "mlflow_tracking_password"


def private_secret(path: Path) -> str:
    """The secret in ``path``: read, or made (URL-safe, 32 random bytes) and written 0600 on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process: theirs is the secret
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return secret


def new_password() -> str:
    return secrets.token_urlsafe(24)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from its first byte (a reader sees the old file or the
    new one, never a part)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_credentials(path: Path, username: str, password: str) -> None:
    """A user's name and password in MLflow's credentials format, 0600."""
    write_private(path, f"[{SECTION}]\n{USERNAME_KEY} = {username}\n{PASSWORD_KEY} = {password}\n")


def read_credentials(path: Path) -> tuple[str, str]:
    """(username, password) from a credentials file; ConfigError naming the file when it is missing or incomplete."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as f:
            parser.read_file(f)
        section = parser[SECTION]
        return section[USERNAME_KEY], section[PASSWORD_KEY]
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such credentials file") from None
    except (KeyError, configparser.Error):
        raise ConfigError(f"{path}: not an MLflow credentials file ([{SECTION}] with {USERNAME_KEY} and "
                          f"{PASSWORD_KEY})") from None
