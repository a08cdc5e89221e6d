"""Two Python 3.11 interpreters side by side in one run, on what the test suite's processes do most: start (import
TensorFlow, Keras Tuner and MLflow) and run a tiny sweep (four one-epoch trials on 200 embedded digits: model
building, tf.function tracing, MLflow writes, figures). Each interpreter gets a venv of its own with mnist-exp
installed as ``scripts/test.sh`` installs it; each round runs both, in alternating order.

    python benchmarks/interpreters.py --python /usr/bin/python3.11 --python ~/.pyenv/versions/3.11.7/bin/python3.11 \\
        --rounds 3 --out benchmarks/interpreters.json

CPU seconds are the child's user + system time (resource.getrusage of the waited process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (machine())

SWEEP = f"""name: tiny
search_space: {ROOT / "search_spaces" / "small.yaml"}
data: {{source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}}
training: {{epochs: 1}}
tuner: {{kind: random, max_trials: 4}}
"""
IMPORT = "import tensorflow, keras_tuner, mlflow"


def make_venv(python: str, where: Path) -> Path:
    """A venv made by ``python`` with mnist-exp and its test extra, compiled to bytecode (scripts/test.sh's way)."""
    venv = where / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-compile", "-e", f"{ROOT}[test]"], check=True)
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                             capture_output=True, text=True).stdout.strip()
    subprocess.run([py, "-m", "compileall", "-q", "-j", "0", purelib], stdout=subprocess.DEVNULL)
    return venv


def describe(python: str) -> dict:
    code = ("import json, platform, sys, sysconfig; print(json.dumps({'version': platform.python_version(), "
            "'build': sys.version}))")
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def timed(argv: list[str], cwd: Path) -> dict:
    """Wall and CPU seconds of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def one_round(venv: Path, work: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    (folder / "tiny.yaml").write_text(SWEEP)
    return {"import": timed([str(venv / "bin" / "python"), "-c", IMPORT], folder),
            "sweep": timed([str(venv / "bin" / "mnist-exp"), "sweep", "tiny.yaml"], folder)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", required=True, help="an interpreter (give two)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="JSON file to write")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="interpreters-"))
    venvs = {py: make_venv(py, Path(tempfile.mkdtemp(dir=work))) for py in args.python}
    rounds: dict[str, list[dict]] = {py: [] for py in args.python}
    for r in range(args.rounds):
        for py in (args.python if r % 2 == 0 else args.python[::-1]):
            rounds[py].append(one_round(venvs[py], work))
            print(f"round {r + 1} {py}: {rounds[py][-1]}", flush=True)
    median = {py: {part: {k: statistics.median(x[part][k] for x in runs) for k in ("wall_s", "cpu_s")}
                   for part in ("import", "sweep")} for py, runs in rounds.items()}
    first, second = args.python[:2]
    ratios = {part: round(median[second][part]["cpu_s"] / median[first][part]["cpu_s"], 2) for part in ("import", "sweep")}
    print(f"median: {json.dumps(median)}\nCPU {second} / {first}: {ratios}", flush=True)
    if args.out:
        info = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d"),
                "command": "python benchmarks/interpreters.py " + " ".join(sys.argv[1:]),
                "interpreters": {py: describe(str(venvs[py] / "bin" / "python")) | {"given": py} for py in args.python},
                "median": median, "cpu_ratio_second_to_first": ratios, "rounds": rounds}
        Path(args.out).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
