"""The oracle's lock, released whatever happens inside.

Keras Tuner 1.4.8's ``synchronized`` takes a per-oracle lock around ``create_trial``, ``update_trial`` and
``end_trial`` (a chief answers workers from several gRPC threads) but releases it only when the call returns:
one exception inside (a report for a trial taken back, a full disk while saving) leaves the lock held and every
later call from every worker waits forever. ``synchronized`` here takes the same lock, so Keras Tuner's own
decorated methods called inside it see it held by this thread and do not take it again, and releases it in a
``finally``. Every oracle method of mnist-exp that is entered from outside the oracle uses it.
"""

from __future__ import annotations

import functools
import threading

from keras_tuner.src.engine import oracle as kt_oracle  # LOCKS and THREADS: not exported by keras_tuner 1.4.8


def synchronized(func):
    """Keras Tuner's per-oracle lock around ``func`` (a method), released even when ``func`` raises."""

    @functools.wraps(func)
    def wrapped(oracle, *args, **kwargs):
        name = threading.current_thread().name
        if kt_oracle.THREADS[oracle] == name:  # already inside one of this oracle's locked calls
            return func(oracle, *args, **kwargs)
        kt_oracle.LOCKS[oracle].acquire()
        kt_oracle.THREADS[oracle] = name
        try:
            return func(oracle, *args, **kwargs)
        finally:
            kt_oracle.THREADS[oracle] = None
            kt_oracle.LOCKS[oracle].release()

    return wrapped
