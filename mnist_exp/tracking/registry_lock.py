"""Locks kept in the MLflow model registry, so they hold for every store and across machines.

A lock is a registered model with a reserved name. Creating a registered model is an atomic test-and-set on
every backend: the name is the registry table's primary key, so of several concurrent creates exactly one
succeeds and the others get RESOURCE_ALREADY_EXISTS (tests/results/test_promote_race.py races them on sqlite
and on a server over PostgreSQL). Its tags, written in the same request, name the holder (pid,
host, process start, time, a random token); it is released by deleting it, only while it still carries our
token. A holder on this machine (same host and boot) is judged by the kernel (pid gone or reused: broken at
once); one elsewhere by age: since it was taken, or, for a lock that refreshes a heartbeat tag while held
(``heartbeat_s``), since its last heartbeat.

Users: promote.py (a promotion: seconds, no heartbeat) and sweep_lock.py's backend for tracking servers (a
sweep: hours, heartbeat). The MLflow UI's Models page lists a lock while it is held; its description says so.
"""

from __future__ import annotations

import random
import secrets
import sys
import threading
import time

from mnist_exp.runtime.errors import ConfigError
from mnist_exp.tracking import keys, liveness, team


def _code(e) -> str:
    return getattr(e, "error_code", "")


class Busy(Exception):
    """The lock is held by a live holder (``.holder``: its tags) past the wait."""

    def __init__(self, holder: dict):
        super().__init__("held")
        self.holder = holder


class RegistryLock:
    def __init__(self, client, name: str, description: str, ttl_s: float, heartbeat_s: float | None = None,
                 tags: dict | None = None, who: str = "mnist-exp", kind: str = "lock", about=None, announce=True,
                 uri: str | None = None):
        """``who``: the command, ``kind``: what the lock is ("promotion lock"), for the messages; ``about``:
        tags -> words on what the holder does (" promoting sweep a"), after its host. ``uri``: a tracking server
        with auth, whose team roster may break the lock when its holder dies (team.share)."""
        self.client, self.name, self.description = client, name, description
        self.ttl_s, self.heartbeat_s, self.extra = ttl_s, heartbeat_s, dict(tags or {})
        self.who, self.kind, self.about = who, kind, about or (lambda tags: "")
        self.announce = announce  # False: the caller says it, from the holder acquire() returns
        self.uri = uri
        self.token: str | None = None
        self._stop = threading.Event()

    # --- reading ----------------------------------------------------------------------------------

    def holder(self) -> dict | None:
        """The lock's tags, or None when nobody holds it. A registered model of that name without our token
        tag is not a lock: never taken, never broken (ConfigError)."""
        from mlflow.exceptions import MlflowException

        for attempt in range(3):
            try:
                model = self.client.get_registered_model(self.name)
            except MlflowException as e:
                if _code(e) == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
            if keys.TAG_LOCK_TOKEN in model.tags:
                tags = dict(model.tags)
                tags.setdefault(keys.TAG_LOCK_SINCE, str((model.creation_timestamp or 0) / 1000))
                return tags
            # The model and its tags are read by two statements: a lock released between them reads untagged
            # (seen on sqlite with four racers). Read again; only a model that stays untagged is not a lock.
            time.sleep(0.05 * (attempt + 1))
        raise ConfigError(f"registered model {self.name} exists but is not a {self.kind} (no {keys.TAG_LOCK_TOKEN} tag); "
                          "mnist-exp reserves the name: rename that model")

    def held(self) -> bool:
        h = self.holder()
        return self.token is not None and h is not None and h.get(keys.TAG_LOCK_TOKEN) == self.token

    def describe(self, tags: dict, now: float | None = None) -> str:
        try:
            age = f", taken {(now or time.time()) - float(tags[keys.TAG_LOCK_SINCE]):.0f} s ago"
        except (KeyError, ValueError):
            age = ""
        return f"pid {tags.get(keys.TAG_PID, '?')} on host {tags.get(keys.TAG_HOST, '?')}{self.about(tags)}{age}"

    def stale_reason(self, tags: dict, now: float | None = None) -> str | None:
        """Why a held lock may be broken, or None (see the module docstring)."""
        now = now or time.time()
        if tags.get(keys.TAG_HOST) == liveness.HOST and \
                tags.get(keys.TAG_PROC_START, "").partition(":")[0] == liveness.BOOT_ID:
            return liveness.dead_reason({**tags, keys.TAG_HEARTBEAT: str(now)})
        key = keys.TAG_HEARTBEAT if self.heartbeat_s and keys.TAG_HEARTBEAT in tags else keys.TAG_LOCK_SINCE
        try:
            age = now - float(tags[key])
        except (KeyError, ValueError):
            age = float("inf")
        if age > self.ttl_s:  # clocks of the machines sharing a store agree far better than this
            if key == keys.TAG_HEARTBEAT:
                return f"{self.describe(tags, now)}, last heartbeat {age:.0f} s ago (more than {self.ttl_s:.0f} s)"
            return f"{self.describe(tags, now)} (more than {self.ttl_s:.0f} s)"
        return None

    # --- taking and giving back -----------------------------------------------------------------------

    def acquire(self, wait_s: float = 0.0) -> dict | None:
        """Take the lock (returns the tags of a dead holder broken on the way, or None); ``Busy`` after
        ``wait_s`` if a live holder keeps it."""
        from mlflow.exceptions import MlflowException

        token = secrets.token_hex(16)
        tags = {**liveness.identity(), keys.TAG_LOCK_TOKEN: token, keys.TAG_LOCK_SINCE: f"{time.time():.3f}", **self.extra}
        if not self.heartbeat_s:
            tags.pop(keys.TAG_HEARTBEAT, None)  # nothing refreshes it: the lock's age is keys.TAG_LOCK_SINCE
        deadline, delay, broken = time.monotonic() + wait_s, 0.05, None
        while True:
            try:
                self.client.create_registered_model(self.name, tags=tags, description=self.description)
                break
            except MlflowException as e:
                # DOES_NOT_EXIST: the holder released between our failed insert and MLflow's look-up of it
                if _code(e) not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile: try again at once
            if holder[keys.TAG_LOCK_TOKEN] == token:
                break  # our own create, answered late and retried by the HTTP client
            why = self.stale_reason(holder)
            if why:
                if self.announce:
                    print(f"{self.who}: breaking the {self.kind} {self.name}: {why}", file=sys.stderr, flush=True)
                self._break(holder, why)
                broken = holder
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise Busy(holder)
            time.sleep(min(left, delay * random.uniform(0.5, 1.5)))  # jitter: waiters do not poll in step
            delay = min(delay * 2, 2.0)
        self.token = token
        if self.uri:
            team.share(self.client, self.uri, self.name)
        if self.heartbeat_s:
            self._stop.clear()
            threading.Thread(target=self._beat, name=f"lock-{self.name}", daemon=True).start()
        return broken

    def release(self) -> None:
        self._stop.set()
        if self.token is not None:
            self._delete_if(self.token)
            self.token = None

    def _break(self, holder: dict, why: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._delete_if(holder[keys.TAG_LOCK_TOKEN])
        except MlflowException as e:
            if _code(e) != "PERMISSION_DENIED":
                raise
            raise ConfigError(f"the {self.kind} {self.name} is stale ({why}) but this user may not break it: an admin "
                              f"may delete the registered model {self.name}, or grant this user the sweep level "
                              "(mnist-exp server-users DIR grant USER run)") from None

    def _delete_if(self, token: str) -> None:
        """Delete the lock if it still carries ``token`` (a lock taken over meanwhile is someone else's)."""
        from mlflow.exceptions import MlflowException

        holder = self.holder()
        if holder is None or holder.get(keys.TAG_LOCK_TOKEN) != token:
            return
        try:
            self.client.delete_registered_model(self.name)
        except MlflowException as e:
            if _code(e) != "RESOURCE_DOES_NOT_EXIST":  # deleted meanwhile (a retried request, a breaker)
                raise

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.client.set_registered_model_tag(self.name, keys.TAG_HEARTBEAT, f"{time.time():.3f}")
            except Exception:  # the store is away for a moment: the lock is stale only after ttl_s
                pass
