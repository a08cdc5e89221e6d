"""Racing promotions: several ``mnist-exp promote`` processes on one store end with the better model, and the
promotion lock (a registered model, promote.promotion_lock) waits for a live holder and breaks a dead one.

The races run against each backend in BACKENDS, the lock's own tests on sqlite; one module-scoped store holds
two tiny real sweeps (a, b): on sqlite a copy of conftest's swept store, on the server swept there. Each test stages
the test accuracies it needs and clears the registry first.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time

import pytest

from mnist_exp.tracking import liveness
from mnist_exp.results.promote import LOCK_SUFFIX, LOCK_TTL_S

from helpers import ROOT, VENV_BIN, write_yaml
from mnist_exp.tracking import keys

MODEL = "mnist-cnn"
LOCK = MODEL + LOCK_SUFFIX
# sqlite: a local store; http: conftest.tracking_server, a real MLflow server on PostgreSQL (mnist-exp server)
BACKENDS = ["sqlite", "http"]

SWEEP = f"""# mnist-exp sweep {{name}}.yaml
name: {{name}}
search_space: {ROOT / "search_spaces" / "small.yaml"}
data: {{{{source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}}}}
training: {{{{epochs: 1}}}}
tuner: {{{{kind: random, max_trials: 2}}}}
"""  # helpers.TINY_SWEEP under two names, swept on the server


@pytest.fixture(scope="module", params=BACKENDS)
def race(request, tmp_path_factory):
    """(tracking URI, project folder, {sweep: best trial's run id}) with sweeps a and b in it."""
    from mlflow import MlflowClient

    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.model.data import load_data
    from mnist_exp.spec.space import load_space
    from mnist_exp.search.sweep import run_sweep

    root = tmp_path_factory.mktemp(f"race-{request.param}")
    if request.param == "sqlite":  # a copy of conftest's swept store: its sweeps a and b share their test digits
        (root / "mlruns").mkdir()
        shutil.copy(request.getfixturevalue("swept_template") / "mlruns" / "mlflow.db", root / "mlruns" / "mlflow.db")
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    else:
        server = request.getfixturevalue("tracking_server")
        uri = getattr(server, "uri", server)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)  # the project folder: a server's sweeps keep their tuner state in ./mlruns/tuner
            for name in ("a", "b"):
                exp = load_experiment(write_yaml(root / f"{name}.yaml", SWEEP.format(name=name)))
                run_sweep(exp, load_space(exp.search_space), load_data(exp.data, exp.seed), uri)
    client = MlflowClient(uri, uri)
    exp_id = client.get_experiment_by_name("mnist-exp").experiment_id
    best = {}
    for name in ("a", "b"):  # promote's choice: the best objective, the earliest on a tie
        trials = [r for r in client.search_runs([exp_id], f"tags.`mnist_exp.sweep` = '{name}' and "
                                                "tags.`mnist_exp.kind` = 'trial'") if r.info.status == "FINISHED"]
        best[name] = max(trials, key=lambda r: (r.data.metrics["objective"], -r.info.start_time)).info.run_id
    return uri, root, best


def clean(client):
    """An empty registry: no model, no lock."""
    for name in (MODEL, LOCK):
        if client.search_registered_models(f"name = '{name}'"):
            client.delete_registered_model(name)


_step = iter(range(1, 10**6))


def stage(client, best, accuracies: dict) -> None:
    """Give each sweep's best trial a test accuracy (a newer value of the metric)."""
    step = next(_step)
    for sweep, acc in accuracies.items():
        client.log_metric(best[sweep], "test_accuracy", acc, step=step)


# A racer: `mnist-exp promote` (cli.main) in a process that has done its imports, says so and waits for the
# go file, so that racers reach the registry within milliseconds of each other, not seconds of import jitter.
RACER = """import os, sys, time
import mlflow, mnist_exp.cli, mnist_exp.results.promote
ready, go = sys.argv[1:3]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
sys.exit(mnist_exp.cli.main(sys.argv[3:]))
"""


def promote(uri, root, *args, env=None, start: tuple | None = None) -> subprocess.Popen:
    """`mnist-exp promote ARGS`; with ``start`` (ready file, go file), a racer that waits for the go file."""
    cmd = [sys.executable, "-c", RACER, *map(str, start), "promote"] if start else [str(VENV_BIN / "mnist-exp"), "promote"]
    return subprocess.Popen([*cmd, *args], cwd=root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri, **(env or {})})


def start_together(uri, root, tmp_path, sweeps) -> list:
    """One racer per sweep, released at once when all have started: [(sweep, process)]."""
    go = tmp_path / "go"
    procs = [(s, promote(uri, root, s, start=(tmp_path / f"ready{i}", go))) for i, s in enumerate(sweeps)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(len(sweeps))):
        assert all(p.poll() is None for _, p in procs), [finish(p) for _, p in procs]
        assert time.monotonic() < deadline, "racers did not start within 120 s"
        time.sleep(0.05)
    go.touch()
    return procs


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def lock_tags(**over) -> dict:
    tags = {**liveness.identity(), keys.TAG_LOCK_TOKEN: "0" * 32, keys.TAG_LOCK_SINCE: f"{time.time():.3f}",
            keys.TAG_LOCK_SWEEP: "z"}
    tags.pop(keys.TAG_HEARTBEAT)
    return {**tags, **over}


@pytest.mark.slow
def test_racing_promotions_end_with_the_better_model(race, tmp_path):
    """Two racers promote the worse sweep and two the better one, started together; whatever order they reach
    the registry in, the better model ends champion, in one version, with its tags, and no lock is left.
    (Without the guard about 40% of rounds fail: the worse model moves the alias last, or one run is
    registered twice.) One round per backend, the better sweep a on one and b on the other."""
    from mlflow import MlflowClient

    uri, root, best = race
    client = MlflowClient(uri, uri)
    clean(client)
    better, worse = ("a", "b") if uri.startswith("sqlite") else ("b", "a")  # the better sweep, one per backend
    stage(client, best, {better: 0.95, worse: 0.60})
    racers = [worse, worse, better, better]
    random.shuffle(racers)
    procs = start_together(uri, root, tmp_path, racers)
    results = [(s, *finish(p)) for s, p in procs]
    for sweep, code, out, err in results:
        assert code in (0, 1), err[-3000:]
        assert code == 0 or (sweep == worse and "is below the champion's 0.9500" in err), err[-3000:]
        assert (code == 0) == (f"models:/{MODEL}@champion -> version" in out)
        assert "breaking the promotion lock" not in err and "Traceback" not in err, err[-3000:]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == best[better], results
    assert champion.tags["mnist_exp.promoted_at"] and champion.description and "mnist_exp.forced" not in champion.tags
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len({v.run_id for v in versions}) == len(versions)  # never two versions of one run
    assert not client.search_registered_models(f"name = '{LOCK}'")  # the lock is always released


@pytest.mark.slow
@pytest.mark.parametrize("race", ["sqlite"], indirect=True)  # the lock's logic; http: the race rounds above
@pytest.mark.parametrize("holder", ["elsewhere", "here"])
def test_a_dead_holders_lock_is_broken_with_one_line(race, holder):
    """A lock from another machine older than LOCK_TTL_S, or from a process of this machine that is gone, is
    broken at once with one line, and the promotion goes ahead."""
    from mlflow import MlflowClient

    uri, root, best = race
    client = MlflowClient(uri, uri)
    clean(client)
    stage(client, best, {"a": 0.9})
    if holder == "elsewhere":
        tags = lock_tags(**{keys.TAG_HOST: "elsewhere", keys.TAG_PID: "4242", keys.TAG_PROC_START: "x:1",
                            keys.TAG_LOCK_SINCE: f"{time.time() - LOCK_TTL_S - 60:.3f}"})
        why = rf"pid 4242 on host elsewhere promoting sweep z, taken 6[6-9]\d s ago \(more than {LOCK_TTL_S} s\)"
    else:
        gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        tags = lock_tags(**{keys.TAG_PID: str(gone.pid), keys.TAG_PROC_START: liveness.proc_start(gone.pid)})
        gone.kill()
        gone.wait()
        why = re.escape(f"its process (pid {gone.pid} on host {liveness.HOST}) is gone")
    client.create_registered_model(LOCK, tags=tags)
    code, out, err = finish(promote(uri, root, "a"))
    assert code == 0, err[-3000:]
    broke = [line for line in err.splitlines() if "promotion lock" in line]
    assert len(broke) == 1 and re.fullmatch(f"mnist-exp promote: breaking the promotion lock {re.escape(LOCK)}: {why}",
                                            broke[0]), err[-3000:]
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == best["a"]
    assert not client.search_registered_models(f"name = '{LOCK}'")


@pytest.mark.slow
@pytest.mark.parametrize("race", ["sqlite"], indirect=True)  # the lock's logic; http: the race rounds above
@pytest.mark.parametrize("holder", ["elsewhere", "here"])
def test_a_live_holders_lock_makes_promote_wait_then_fail_with_one_line(race, holder):
    """A fresh lock of another machine, or one of a live process here (this test's), is waited for
    (MNIST_EXP_PROMOTION_WAIT_S) and then promote exits 1 naming the holder; nothing changes."""
    from mlflow import MlflowClient

    uri, root, best = race
    client = MlflowClient(uri, uri)
    clean(client)
    stage(client, best, {"a": 0.9})
    over = {keys.TAG_HOST: "elsewhere", keys.TAG_PID: "4242"} if holder == "elsewhere" else {}
    client.create_registered_model(LOCK, tags=lock_tags(**over))
    started = time.monotonic()
    code, out, err = finish(promote(uri, root, "a", env={"MNIST_EXP_PROMOTION_WAIT_S": "3"}))
    assert code == 1 and time.monotonic() - started >= 3, err[-3000:]
    pid, host = (4242, "elsewhere") if holder == "elsewhere" else (os.getpid(), liveness.HOST)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"mnist-exp promote: refused: another promotion holds {LOCK} (pid {pid} on host {host} promoting sweep z, "
        "taken "), err[-3000:]
    assert lines[0].endswith("s ago); waited 3 s and changed nothing; run again when it is done")
    assert client.get_registered_model(LOCK).tags[keys.TAG_LOCK_TOKEN] == "0" * 32  # the holder's lock is left alone
    assert not client.search_registered_models(f"name = '{MODEL}'")  # nothing registered
    client.delete_registered_model(LOCK)


@pytest.mark.slow
@pytest.mark.parametrize("race", ["sqlite"], indirect=True)  # the lock's logic; http: the race rounds above
def test_a_model_named_like_a_lock_is_neither_taken_nor_broken(race):
    """A registered model that merely has the lock's name (no lock token) stops promote with exit 2, untouched;
    and a --model-name ending with the lock suffix is refused before the store is opened."""
    from mlflow import MlflowClient

    uri, root, best = race
    client = MlflowClient(uri, uri)
    clean(client)
    client.create_registered_model(LOCK, tags={"mine": "1"})
    code, out, err = finish(promote(uri, root, "a"))
    assert code == 2 and f"registered model {LOCK} exists but is not a promotion lock" in err, err[-3000:]
    assert client.get_registered_model(LOCK).tags == {"mine": "1"}
    client.delete_registered_model(LOCK)
    code, out, err = finish(promote(uri, root, "a", "--model-name", LOCK))
    assert code == 2 and f"--model-name: '{LOCK}' ends with '{LOCK_SUFFIX}'" in err, err[-3000:]
