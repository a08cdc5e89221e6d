"""The command blocks of README.md and docs/getting-started.md run as written (in a temporary folder, on the data
that ships with mnist-exp, the sweep shortened with --set as the page says), and every line of the output each page
shows still has its shape: a renamed flag or a changed output fails here."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from helpers import ROOT, VENV_BIN, Output, free_port

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"^```(bash|text)\n(.*?)^```", re.S | re.M)
SETUP = ("python3.11 -m venv", "source .venv/bin/activate", "bash scripts/test.sh")  # this checkout's venv is used
SHORT = "--set tuner.max_trials=2 --epochs 1 --set data.train_size=300 --set data.test_size=100"  # as the pages say


def blocks(page):
    """[(bash, [text, ...])]: each command block and the output blocks shown after it."""
    out = []
    for kind, body in BLOCK.findall((ROOT / page).read_text()):
        if kind == "bash":
            out.append((body, []))
        elif out:
            out[-1][1].append(body)
    return out


def shape(line: str) -> re.Pattern:
    """A shown output line as a pattern: numbers, run ids and elisions (…) vary, spacing may."""
    pattern = ""
    for token in re.split(r"(<run id>|…|\d+(?:\.\d+)?|\s+)", line.strip()):
        if token == "<run id>":
            pattern += r"\w+"
        elif token == "…":
            pattern += r".*"
        elif re.fullmatch(r"\d+(?:\.\d+)?", token or "x"):
            pattern += r"[\d.]+"
        elif token and token.isspace():
            pattern += r"\s+"
        else:
            pattern += re.escape(token)
    return re.compile(pattern, re.M)


def run(script: str, cwd, env, port: int) -> str:
    lines = [ln for ln in script.splitlines() if not ln.startswith(SETUP)]
    if any(ln.startswith("mnist-exp ui") for ln in lines):  # serves until stopped: run it, read its lines, stop it
        ui = Output(subprocess.Popen([str(VENV_BIN / "mnist-exp"), "ui", "--no-browser", "--port", str(port)], cwd=cwd,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True))
        try:
            ui.wait_for(r"Ctrl-C stops it", 120)
        finally:
            os.killpg(ui.p.pid, signal.SIGTERM)
            ui.p.wait(30)
        return ui.out
    text = "\n".join(lines).replace("mnist-exp sweep experiments/quick.yaml", f"mnist-exp sweep experiments/quick.yaml "
                                                                               f"{SHORT}").replace("5001", str(port))
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + text], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{text}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_the_pages_commands_run_and_print_what_the_pages_show(tmp_path):
    """Getting started first, step by step; then the README, whose commands are mostly the same lines: a line
    Getting started ran is not run again, its output is checked against what the README shows."""
    for folder in ("experiments", "search_spaces"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "mnist_exp" / "resources").mkdir(parents=True)
    shutil.copy(ROOT / "mnist_exp" / "resources" / "mnist_subset.npz", tmp_path / "mnist_exp" / "resources")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env.update(PATH=f"{VENV_BIN}:{env['PATH']}", TF_CPP_MIN_LOG_LEVEL="2")
    outputs: dict[str, str] = {}  # a command block's lines -> its output
    ran = []
    for page in ("docs/getting-started.md", "README.md"):
        for script, shown in blocks(page):
            lines = [ln for ln in script.splitlines() if ln.strip() and not ln.startswith(SETUP)]
            if not lines:
                continue
            key = "\n".join(lines)
            if key not in outputs:  # a block Getting started ran already is checked against that run's output
                t = time.monotonic()
                outputs[key] = run(script, tmp_path, env, free_port())
                ran.append((page, key, round(time.monotonic() - t)))
            out = outputs[key]
            for text in shown:
                for line in text.splitlines():
                    if line.strip() and line.strip() != "…":
                        assert shape(line).search(out), (f"{page}: no line shaped like\n  {line}\nin the output of\n"
                                                         f"{script}\n{out[-4000:]}")
    print(ran)
    assert len(ran) >= 5
    assert (tmp_path / "mlruns" / "mlflow.db").is_file() and (tmp_path / "my_digit.png").is_file()  # the pages made it
