"""Running mnist-exp as a user does: the installed console script in a subprocess, and small experiment files."""

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
