"""Named fault points, for the reliability tests (tests/search/test_faults.py).

``point("after_run_finished")`` does nothing unless ``MNIST_EXP_FAULT`` names that point; then the
process kills itself with SIGKILL right there, as a power cut or ``kill -9`` would: no ``finally``,
no handler, no flush. ``MNIST_EXP_FAULT=name@N`` fires on the N-th time the point is reached (1-based);
``name@N:int`` sends SIGINT instead (a Ctrl-C at exactly that point), ``name@N:term`` SIGTERM (a scheduler
stopping the job there), ``name@N:raise`` raises
``FaultRaised`` there (an error in the code at that point). Reading one environment variable is all it
costs when unset.
"""

from __future__ import annotations

import os
import signal

ENV = "MNIST_EXP_FAULT"


class FaultRaised(RuntimeError):
    pass

_seen: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        item, _, how = item.strip().partition(":")
        target, _, nth = item.partition("@")
        if target != name:
            continue
        _seen[name] = _seen.get(name, 0) + 1
        if _seen[name] == int(nth or 1):
            if how == "raise":
                raise FaultRaised(f"fault point {name}")
            sig = {"int": signal.SIGINT, "term": signal.SIGTERM}.get(how, signal.SIGKILL)
            os.write(2, f"\n[fault point {name}: {sig.name}]\n".encode())
            os.kill(os.getpid(), sig)
