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
