"""What can end a trial other than its model, and what each means for the sweep.

A store that stopped answering and a full disk are not the trial's fault: the sweep stops and the trial runs
again on resume. A worker whose chief is gone stops; one whose lease was given away goes on with its next
trial. Keras Tuner re-raises ``FatalError`` from ``search()`` instead of marking the trial failed.
"""

from __future__ import annotations

import errno

import keras_tuner as kt

from mnist_exp.tracking.server_store import is_unavailable


class StoreUnavailable(kt.errors.FatalError):
    """The tracking store cannot be reached after MLflow's retries."""


class ChiefGone(kt.errors.FatalError):
    """A worker's chief stopped answering: the worker stops; the chief gives the trial to another."""


class Superseded(Exception):
    """The chief refused a worker's report: the trial's lease had expired and another worker has it.
    Not fatal: the worker goes on with its next trial."""


class LeaseLost(Superseded):
    """The trial was given to another worker before this attempt's fit ended: its run is left as it is, with its
    checkpoint, for the worker that has the trial now to reopen and continue."""


class DiskFullStop(kt.errors.FatalError):
    """A write found no space left (checkpoint, artifact or store)."""


def is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain, or sqlite's "database or disk is full"."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "database or disk is full" in text or "No space left on device" in text or "[Errno 28]" in text:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def is_store_unavailable(e: BaseException) -> bool:
    return isinstance(e, StoreUnavailable) or is_unavailable(e)


def as_store_unavailable(e: Exception) -> Exception:
    """``e`` as a StoreUnavailable when the store stopped answering, else ``e`` itself."""
    if isinstance(e, StoreUnavailable) or not is_unavailable(e):
        return e
    return StoreUnavailable(f"the tracking store stopped answering: {first_line(e)}")


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:300]
