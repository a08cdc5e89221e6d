"""Ctrl-C, SIGTERM and SIGHUP, taken where a trial can end cleanly.

A ``KeyboardInterrupt`` raised straight from a signal handler lands wherever Python happens to be.
Inside TensorFlow's step function (Python called back from C) it came out as
``SystemError: Objects/listobject.c:338: bad argument to internal function``: an ordinary
Exception, so the trial was marked FAILED (and never retried) instead of KILLED. Found with a
SIGTERM 6 s into a parallel sweep (most likely also what CI saw once: "no trial KILLED").

So inside a trial (``defer(True)`` … ``defer(False)``, or ``deferred()``) the handler only
records the signal and runs the stop hook, if one is set (``stop_hook``: a fit's
``training.StopOnSignal`` asks Keras to stop at the next step boundary, with no per-step Python
work); the interrupt is raised at safe points: the end of the epoch that was cut short, between a
trial's phases, or after Keras Tuner has recorded a trial that finished anyway (``check()``).
Outside a trial, and on a second signal, it is raised at once.

SIGHUP (the terminal closed) is handled like SIGTERM, so the run ends KILLED, not RUNNING. That
terminal is gone, so stdout/stderr, where they were it, are pointed at /dev/null first: a write to a
hung-up terminal fails (EIO) and would turn the clean stop into a traceback (and exit code 120).
The ``KeyboardInterrupt`` carries the signal (``signum``): the CLI exits 128 + signal (SIGINT 130,
SIGTERM 143, SIGHUP 129).

Example::

    with interrupt.handled():          # Ctrl-C / SIGTERM / SIGHUP → KeyboardInterrupt, at safe points
        with interrupt.deferred():
            model.fit(..., callbacks=[training.StopOnSignal()])
            interrupt.check()
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

_pending: int | None = None  # a signal received while deferring, not raised yet
_received: int | None = None  # the first signal handled since handled() began: a stop is under way
_deferring = False
_stop_hook = None  # called when a signal is recorded: asks the running fit to stop (training.StopOnSignal)


def interrupted(signum: int) -> KeyboardInterrupt:
    """The KeyboardInterrupt for a signal, carrying it as ``signum`` (the exit code is 128 + signum)."""
    e = KeyboardInterrupt(f"signal {signum}")
    e.signum = signum
    return e


def exit_code(e: BaseException) -> int:
    """128 + the signal a KeyboardInterrupt came from; a plain Ctrl-C (Python's own handler) is SIGINT."""
    return 128 + getattr(e, "signum", signal.SIGINT)


def _handler(signum, frame):
    global _pending, _received
    if _received is None:
        _received = signum
    if signum == signal.SIGHUP:
        _detach_dead_terminal()
    if _deferring and _pending is None:
        _pending = signum
        # os.write, not print: a handler may run in the middle of another print
        try:
            os.write(2, f"\n{signal.Signals(signum).name}: stopping at the next safe point (again to force)\n".encode())
        except OSError:  # stderr gone: raising here would land inside whatever was running
            pass
        if _stop_hook is not None:
            _stop_hook()
        return
    _pending = None
    raise interrupted(signum)


def _detach_dead_terminal() -> None:
    """Point stdout/stderr at /dev/null where they are a hung-up terminal: after a hang-up the kernel
    fails every write to it with EIO (an empty write too; files and pipes accept one), and isatty()
    already says no."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
            except OSError:
                pass


@contextlib.contextmanager
def handled(signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
    """Turn the signals into KeyboardInterrupt (at safe points) for the block. Off the main thread
    (where Python allows no signal handlers) it changes nothing."""
    global _pending, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _pending = None
        stop_hook(None)
        defer(False)  # a trial left by an exception never reached its on_trial_end


def received() -> bool:
    """Whether a signal has reached this process inside ``handled()`` (recorded or raised): a stop is under way,
    and a second signal would force it."""
    return _received is not None


def defer(on: bool) -> bool:
    """Record (True) or raise (False) signals from now on; returns the previous setting.
    Sweeps switch it per trial in the tuner's on_trial_begin / on_trial_end."""
    global _deferring
    was, _deferring = _deferring, on
    return was


@contextlib.contextmanager
def deferred():
    """While inside, a first signal is recorded, not raised; leaving does not raise it either:
    the caller decides where (``check()``), so that finished work is never reported interrupted."""
    was = defer(True)
    try:
        yield
    finally:
        defer(was)


def stop_hook(fn) -> None:
    """Call ``fn()`` (from the signal handler, so it must only set flags) when a signal is recorded from now on;
    None removes it. One at a time: a fit sets its own at its start and removes it at its end."""
    global _stop_hook
    _stop_hook = fn


def pending() -> bool:
    """Whether a signal was recorded and not raised yet."""
    return _pending is not None


def check() -> None:
    """Raise the recorded interrupt, if any."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise interrupted(signum)

