"""A local store that was moved or copied to another folder: detected before any command uses it, and relocated.

MLflow records absolute artifact locations (experiments, runs, logged models, model versions). A store moved with
its ``artifacts/`` folder still points at the old folder: new artifacts would go there (or fail) and ``predict``
would find no model. :func:`moved_from` notices it from the experiments' locations; :func:`relocate` (``mnist-exp
relocate``) backs the database up, rewrites every recorded location from the old folder to the store's own in one
transaction (a kill leaves the store as it was), then checks that every registered model's files are found where
the records now say. A store whose artifacts never lay beside it (its folder has no ``artifacts/``) is not a moved store.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mnist_exp.runtime import faults
from mnist_exp.runtime.errors import StoreError

# Every column in which MLflow 3.17 records where artifacts lie (only those present are read).
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
             ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
             ("model_versions", "source"))


def _path(location: str) -> Path | None:
    """The local folder a recorded location names (``file://`` URI or plain path); None for anything else."""
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


def _artifacts_root(location: str) -> Path | None:
    """The store folder an mnist-exp artifact location lies in: ``<folder>`` of ``<folder>/artifacts`` or
    ``<folder>/artifacts/<experiment id>``, as recorded; None for any other location."""
    path = _path(location)
    if path is None:
        return None
    if path.name == "artifacts":
        return path.parent
    if path.parent.name == "artifacts":
        return path.parent.parent
    return None


def moved_from(db: sqlite3.Connection, folder: Path) -> list[str]:
    """The other folders this store's experiments record as their artifacts' home, when the store's own folder
    has an ``artifacts/`` (the store moved with its artifacts); [] otherwise."""
    if not (folder / "artifacts").is_dir():
        return []
    here = folder.resolve()
    roots = {_artifacts_root(loc) for (loc,) in db.execute("select artifact_location from experiments")}
    return sorted(str(r) for r in roots if r is not None and r.resolve() != here)  # a symlink to here is here


def check(db: sqlite3.Connection, path: Path) -> None:
    """StoreError (one line naming the fix) if the store at ``path`` records another folder as its home."""
    old = moved_from(db, path.parent)
    if old:
        raise StoreError(f"{path}: this store was moved or copied here from {old[0]} and still records its "
                         f"artifacts there; run: mnist-exp relocate --tracking-uri sqlite:///{path} "
                         "(backs the database up, rewrites the locations, verifies)")


@dataclass(frozen=True)
class Relocation:
    old: list[str]
    rewritten: dict[str, int]  # "table.column" -> rows
    backup: Path | None
    models_checked: int


def relocate(path: Path) -> Relocation:
    """Rewrite the store's recorded artifact locations from the old folder(s) to its own; see the module doc."""
    path = Path(path).absolute()
    folder = path.parent.resolve()
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        old = moved_from(con, folder)
        if not old:
            return Relocation([], {}, None, _verify(con, folder))
        backup = folder / f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        copy = sqlite3.connect(backup)
        try:
            con.backup(copy)
        finally:
            copy.close()
        tables = {t for (t,) in con.execute("select name from sqlite_master where type = 'table'")}
        rewritten: dict[str, int] = {}
        con.execute("BEGIN IMMEDIATE")
        try:
            for table, column in LOCATIONS:
                if table not in tables:
                    continue
                for root in old:
                    for prefix_old, prefix_new in ((Path(root).as_uri() + "/", folder.as_uri() + "/"),
                                                   (root + "/", str(folder) + "/")):
                        cur = con.execute(f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                                          f'WHERE substr("{column}", 1, ?) = ?',
                                          (prefix_new, len(prefix_old) + 1, len(prefix_old), prefix_old))
                        rewritten[f"{table}.{column}"] = rewritten.get(f"{table}.{column}", 0) + cur.rowcount
            still = moved_from(con, folder)
            if still:
                raise StoreError(f"{path}: would still record {still[0]} after relocating; nothing was changed")
            faults.point("relocate_rewritten")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        try:
            return Relocation(old, {k: v for k, v in rewritten.items() if v}, backup, _verify(con, folder))
        except StoreError as e:
            raise StoreError(f"{e} (the database before relocating: {backup})") from None
    finally:
        con.close()


def _verify(con: sqlite3.Connection, folder: Path) -> int:
    """Every registered model version's files where the records say (StoreError naming the first missing): what
    ``predict`` and ``serve`` load. Returns how many were checked. (A trial's own model may have been deleted by
    ``mnist-exp gc``; registered versions never are.)"""
    tables = {t for (t,) in con.execute("select name from sqlite_master where type = 'table'")}
    rows = con.execute("select storage_location from model_versions").fetchall() if "model_versions" in tables else []
    checked = 0
    for (loc,) in rows:
        local = _path(loc or "")
        if local is None:
            continue
        if not local.exists():
            raise StoreError(f"{folder}: the model files recorded at {loc} are missing; move the store's artifacts/ "
                             "folder with it, then run mnist-exp relocate again")
        checked += 1
    return checked
