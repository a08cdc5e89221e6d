"""Build the upgrade fixture of an earlier release: a small store made by that release's own code.

    python scripts/make_upgrade_fixture.py 74cf6ac tests/fixtures/stores     # -> tests/fixtures/stores/0.1.0.tar.gz

The release's code is taken with ``git archive RELEASE_REF`` into ``/tmp/mnist-exp-release-<version>`` and
run with this interpreter (the dependencies are this venv's) and ``PYTHONPATH=<that folder>``, in a fresh
project folder at a fixed root, ``/tmp/mnist-exp-upgrade-fixture-<version>``, on the embedded digits (both
folders are removed afterwards). It makes

- sweep ``finished``: 2 trials, finished;
- sweep ``interrupted``: 3 trials planned, stopped by SIGTERM once its first trial has finished and its
  second trial's run exists (the release ends that run and the parent KILLED and exits 130, or 143 from 0.3.0 on: 128 + SIGTERM);
- a champion: ``promote finished`` (model ``mnist-cnn``, alias ``champion``, version 1).

Tiny on purpose (200 training and 100 test digits, 1 epoch, 8/8/8 filters, 16 dense units; the search
varies only the learning rate and the activation). The store records absolute paths under the root (MLflow's
artifact locations, the sweeps' state files); ``fixture.json`` in the archive names that root, and a test
rewrites it to where the archive was unpacked (tests/test_upgrade.py, ``relocate``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPACE = """\
# Only cheap choices: the model's size is pinned by the experiments' hp: section.
hyperparameters:
  learning_rate: {type: choice, values: [3.0e-3, 1.0e-2], default: 3.0e-3}
  activation:    {type: choice, values: [relu, gelu], default: relu}
  batch_size:    {type: fixed, value: 8}
"""

EXPERIMENT = """\
# mnist-exp sweep {name}.yaml
name: {name}
search_space: space.yaml
seed: {seed}
data: {{source: embedded, train_size: 200, test_size: 100, validation_split: 0.1}}
training: {{epochs: 1}}
tuner: {{kind: random, max_trials: {trials}}}
hp: {{filters_1: 8, filters_2: 8, filters_3: 8, dense_units: 16}}
"""

INTERRUPTED_PLANNED = 3


def git(*args: str, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, **kw)
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr
        raise SystemExit(f"git {' '.join(args)}: {(err or '').strip() or f'exit {e.returncode}'}") from None


def release_code(ref: str) -> tuple[str, str]:
    """(full commit, __version__) of the release."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}", text=True).stdout.strip()
    version = None
    for path in ("mnist_exp/_version.py", "mnist_exp/__init__.py"):  # 0.5.0 on: _version.py; before: __init__.py
        try:
            text = git("show", f"{commit}:{path}", text=True).stdout
        except SystemExit:  # no such file in that release
            continue
        version = version or next((ln.split("=", 1)[1].strip().strip("\"'") for ln in text.splitlines()
                                   if ln.startswith("__version__")), None)
    if not version:
        raise SystemExit(f"{ref}: neither mnist_exp/_version.py nor mnist_exp/__init__.py has a __version__")
    return commit, version


def unpack(commit: str, into: Path) -> None:
    archive = git("archive", "--format=tar", commit).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


class OldRelease:
    """Runs ``python -m mnist_exp.cli`` of the release's code in the project folder ``root``."""

    def __init__(self, code: Path, root: Path):
        self.root = root
        self.env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2",
                    "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}
        self.cmd = [sys.executable, "-m", "mnist_exp.cli"]
        where = subprocess.run([sys.executable, "-c", "import mnist_exp; print(mnist_exp.__file__)"], env=self.env,
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(code.resolve()):  # the editable install must not win
            raise SystemExit(f"the release's code is not the one imported: mnist_exp from {where}")

    def run(self, *args: str, expect: int = 0) -> str:
        proc = subprocess.run([*self.cmd, *args], cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != expect:
            raise SystemExit(f"{' '.join(args)}: exit {proc.returncode} (expected {expect})\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.cmd, *args], cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)


def trial_states(db: Path, sweep: str) -> tuple[str | None, dict[str, str]]:
    """(parent status, {trial run id: 'trial_id status'}) of a sweep, read-only and without MLflow."""
    if not db.exists():
        return None, {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        parent = con.execute(
            "SELECT r.run_uuid, r.status FROM runs r JOIN tags s ON s.run_uuid = r.run_uuid JOIN tags k "
            "ON k.run_uuid = r.run_uuid WHERE s.key = 'mnist_exp.sweep' AND s.value = ? AND k.key = 'mnist_exp.kind' "
            "AND k.value = 'sweep'", (sweep,)).fetchall()
        if not parent:
            return None, {}
        [(parent_id, parent_status)] = parent
        children = con.execute(
            "SELECT r.run_uuid, t.value, r.status FROM runs r JOIN tags p ON p.run_uuid = r.run_uuid "
            "JOIN tags t ON t.run_uuid = r.run_uuid WHERE p.key = 'mlflow.parentRunId' AND p.value = ? "
            "AND t.key = 'mnist_exp.trial_id'", (parent_id,)).fetchall()
        return parent_status, {run: f"{trial} {status}" for run, trial, status in children}
    except sqlite3.OperationalError:  # tables not there yet, or locked by the writer
        return None, {}
    finally:
        con.close()


def interrupt_after_first_trial(old: OldRelease, exp_file: str, timeout: float = 600) -> None:
    """Start the sweep; SIGTERM it as soon as trial 0 is FINISHED and trial 1's run is RUNNING."""
    db = old.root / "mlruns" / "mlflow.db"
    proc = old.popen("sweep", exp_file)
    deadline = time.time() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the sweep ended before it could be interrupted:\n{proc.stdout.read()[-3000:]}")
            if time.time() > deadline:
                raise SystemExit("the sweep did not reach its second trial in time")
            _, trials = trial_states(db, "interrupted")
            states = sorted(trials.values())
            if "0 FINISHED" in states and "1 RUNNING" in states:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    parent, trials = trial_states(db, "interrupted")
    if code not in (130, 143) or parent != "KILLED" or sorted(trials.values()) != ["0 FINISHED", "1 KILLED"]:
        raise SystemExit(f"interrupted sweep: exit {code}, parent {parent}, trials {sorted(trials.values())}; "
                         f"expected 130 or 143, KILLED, ['0 FINISHED', '1 KILLED'] (run the script again)\n{out[-3000:]}")


def files_naming(root: Path, text: str) -> list[str]:
    """Files under root (other than mlflow.db) whose bytes contain ``text``."""
    needle = text.encode()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != "mlflow.db" and needle in p.read_bytes())


def pack(root: Path, out: Path) -> None:
    """A gzipped tar of root's content, sorted, without owner names (the same content packs the same way)."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=9) as tar:
        for p in sorted(root.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(root)), recursive=False, filter=clean)
    tmp.replace(out)


def build(ref: str, out_dir: Path) -> Path:
    commit, version = release_code(ref)
    # Fixed folders for the code and the store: MLflow records both (the store's as artifact locations, the
    # code's as the runs' source name and the embedded data's path), so the archive names no random path.
    code = Path(f"/tmp/mnist-exp-release-{version}")
    root = Path(f"/tmp/mnist-exp-upgrade-fixture-{version}")
    for leftover in (code, root):  # of an earlier run of this script
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        unpack(commit, code)
        (root / "mlruns").mkdir(parents=True)
        (root / "space.yaml").write_text(SPACE)
        (root / "finished.yaml").write_text(EXPERIMENT.format(name="finished", seed=1, trials=2))
        (root / "interrupted.yaml").write_text(EXPERIMENT.format(name="interrupted", seed=2, trials=INTERRUPTED_PLANNED))
        old = OldRelease(code, root)
        print(f"release {version} ({commit[:12]}) in {root}", flush=True)
        old.run("sweep", "finished.yaml")
        print("  sweep finished: 2 trials", flush=True)
        interrupt_after_first_trial(old, "interrupted.yaml")
        print(f"  sweep interrupted: 1 of {INTERRUPTED_PLANNED} trials finished, the second KILLED", flush=True)
        print("  " + old.run("promote", "finished").strip().replace("\n", "\n  "), flush=True)
        info = {
            "release": version, "commit": commit, "root": str(root), "code": str(code),
            "made_by": f"python scripts/make_upgrade_fixture.py {ref} {out_dir}",
            "tracking_uri": "sqlite:///<root>/mlruns/mlflow.db",
            "sweeps": {"finished": {"file": "finished.yaml", "planned": 2, "finished": ["0", "1"]},
                       "interrupted": {"file": "interrupted.yaml", "planned": INTERRUPTED_PLANNED,
                                       "finished": ["0"], "killed": ["1"]}},
            "champion": {"model": "mnist-cnn", "alias": "champion", "version": "1", "sweep": "finished"},
            # Besides mlflow.db, the files that record the root (rewritten when the store moves).
            "files_naming_root": files_naming(root, str(root)),
        }
        (root / "fixture.json").write_text(json.dumps(info, indent=2) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{version}.tar.gz"
        pack(root, out)
    finally:
        for folder in (code, root):
            shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("release_ref", help="git ref of the release, e.g. 74cf6ac (0.1.0)")
    ap.add_argument("out_dir", type=Path, help="folder of the archives, e.g. tests/fixtures/stores")
    args = ap.parse_args(argv)
    build(args.release_ref, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
