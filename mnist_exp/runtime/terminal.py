"""What the terminal shows while models train.

By default: one line per finished epoch (``epoch_line``, printed by ``training.EpochLogger``) and one
per finished trial (``search.trial_progress``). With ``--verbose``: Keras's progress bar as well
(``training.ProgressBar``) and Keras Tuner's per-trial tables. Light on purpose: the CLI imports it
before TensorFlow.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

from mnist_exp.runtime import heap

# TensorFlow's C++ notices at import: absl's "before InitializeLog" warning and INFO lines ("I0000 … port.cc:153]
# oneDNN custom operations are on …"), which absl writes whatever TF_CPP_MIN_LOG_LEVEL says (see import_tensorflow).
_CHATTER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called|I\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


def fit_verbose(verbose: bool) -> int:
    """Keras's ``fit(verbose=…)`` for the ``--verbose`` flag: 0 without it; with it, the redrawn bar (1) on a
    terminal and Keras's one line per epoch (2) when stdout is a pipe or a file. Keras decides by itself to redraw
    whenever the ``posix`` module is loaded (always, on Linux), so a log file would get carriage returns and ANSI codes."""
    if not verbose:
        return 0
    return 1 if sys.stdout.isatty() else 2


def epoch_line(prefix: str, epoch: int, epochs: int | None, metrics: dict, seconds: float) -> str:
    """``[sweep quick] trial 3 epoch 2/5: loss 0.3120 accuracy 0.9043 val_loss 0.2711 val_accuracy 0.9167 (4.1 s)``"""
    first = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in metrics]
    shown = " ".join(f"{k} {metrics[k]:.4f}" for k in first + [k for k in metrics if k not in first])
    of = f"/{epochs}" if epochs else ""
    return f"{prefix} epoch {epoch}{of}: {shown} ({seconds:.1f} s)"


def import_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up notices dropped; anything else it writes to stderr is kept.

    TensorFlow 2.21 logs through absl, and messages logged before ``absl::InitializeLog()`` (the oneDNN notice,
    from a static initialiser of each of two shared libraries) go to stderr below any threshold: setting
    TF_CPP_MIN_LOG_LEVEL before the import (cli.main does) silences the later ones only. So fd 2 is captured
    for the import and replayed without them.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with heap.collector_paused():  # its half a million objects, walked again and again (heap.py)
                import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True) if not _CHATTER.match(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def hms(s: float) -> str:
    """Seconds as ``H:MM:SS``, rounded to the second: every duration the terminal shows."""
    s = int(round(s))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"
