"""Running mnist-exp as a user does: the installed console script in a subprocess (``cli``: for what needs a process
of its own, such as signals, kills, start-up, ``ps``), the same command line in this process (``cli_here``: the same code
path from the parser on, without paying TensorFlow's import again), and small experiment files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
VENV_BIN = Path(sys.executable).parent
TINY = ["--set", "data.train_size=200", "--set", "data.test_size=100", "--epochs", "1"]


def cli(*args, check=None, timeout=600, env=None):
    """Run the installed console script in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(VENV_BIN / "mnist-exp"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def cli_here(*args, check=None, env=None):
    """``mnist-exp ARGS`` through ``mnist_exp.cli.main`` in this process, its output captured; returns a
    CompletedProcess as ``cli`` does (exit code, stdout, stderr). ``env``: variables set for the command only.
    What a command changes process-wide as a user's process would (os.environ, which MLflow's ``set_tracking_uri``
    writes to; MLflow's tracking URI) is put back afterwards. Not for what needs a process of its own: a lock or a
    run held by this process counts as the command's own."""
    import contextlib
    import io

    import mlflow

    from mnist_exp.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_uri = dict(os.environ), _tracking_uri()
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        if saved_uri:
            mlflow.set_tracking_uri(saved_uri)
        else:
            reset_tracking_uri()
        os.environ.clear()  # after set_tracking_uri, which exports the variable: the environment as it was
        os.environ.update(saved_env)
    proc = subprocess.CompletedProcess(["mnist-exp", *argv], code, out.getvalue(), err.getvalue())
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _tracking_uri():
    """MLflow's process-wide tracking URI as set by ``set_tracking_uri`` (None: unset, the variable decides)."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    return getattr(utils, "_tracking_uri", None)


def reset_tracking_uri():
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_SWEEP = f"""# mnist-exp sweep tiny.yaml
name: tiny
search_space: {ROOT / "search_spaces" / "small.yaml"}
data: {{source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}}
training: {{epochs: 1}}
tuner: {{kind: random, max_trials: 2}}
"""  # two one-epoch trials on 200 digits: the cheapest real sweep


SWEEP_YAML = """# mnist-exp sweep {name}.yaml
name: {name}
search_space: {space}
seed: {seed}
data: {{source: embedded, train_size: 600, test_size: 200, validation_split: 0.2}}
training: {{epochs: 2}}
tuner: {{kind: random, max_trials: 2}}
"""


PRUNED_SWEEP = """# mnist-exp sweep pruned.yaml: a grid whose last learning rate learns nothing
name: pruned
search_space: {space}
seed: 42
data: {{source: embedded, train_size: 600, test_size: 100, validation_split: 0.2}}
training: {{epochs: {epochs}}}
tuner: {{kind: grid, max_trials: 5, pruner: median, pruner_min_trials: 1, parallel_trials: {parallel}}}
"""
PRUNED_SPACE = """hyperparameters:
  learning_rate: {type: choice, values: [3.0e-3, 2.0e-3, 1.0e-7]}
  filters_1: {type: fixed, value: 32}
  batch_size: {type: fixed, value: 32}
"""


def pruned_sweep(folder: Path, parallel: int = 1, epochs: int = 3) -> Path:
    """pruned.yaml in ``folder``: a grid of three learning rates, the last (1e-7) pruned after its first epoch
    once another trial has reached it (median pruner, one trial enough)."""
    space = write_yaml(folder / "space.yaml", PRUNED_SPACE)
    return write_yaml(folder / "pruned.yaml", PRUNED_SWEEP.format(space=space, epochs=epochs, parallel=parallel))


SWEEP_HOLDER = """import sys, time
from mnist_exp.tracking import sweep_lock
uri, name = sys.argv[1], sys.argv[2]
sys.argv = ["mnist-exp", "sweep", "experiments/quick.yaml"]
with sweep_lock.acquire(uri, name):
    print("held", flush=True)
    time.sleep(600)
"""  # python -c SWEEP_HOLDER URI NAME: holds sweep NAME's lock (as `mnist-exp sweep experiments/quick.yaml`), says "held"
