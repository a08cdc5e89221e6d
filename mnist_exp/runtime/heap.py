"""The process's heap: the cyclic garbage collector kept off the objects that live as long as the process."""

from __future__ import annotations

import contextlib
import gc


def freeze() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    With TensorFlow, Keras and MLflow imported, each full collection walks about half a million objects that live
    as long as the process, and Keras Tuner collects twice per trial (``clear_session`` and ``gc.collect`` each
    time it builds a model). Frozen, a collection walks only what came after. Frozen objects are still freed by
    reference counting; a cycle among them that becomes garbage later stays (the price: import-time objects).
    """
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def collector_paused():
    """No automatic collection inside (a large import, which allocates without making garbage); what it made is
    frozen on the way out."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        freeze()
        if was_enabled:
            gc.enable()
