"""scripts/launch-workers.sh and the launch templates in docs/launch/.

The real launches use the network-namespace harness (tests/helpers/hosts.py) as the "ssh": ``--via 'ip netns exec {host}
sh -c'`` with the namespaces' names as hosts, the chief in the root namespace on the harness's gateway address,
and a sqlite store that every namespace sees (they share the filesystem; tests/search/distributed/test_multihost.py covers
machines that share no files). The cheap tests use a stand-in for mnist-exp that prints what it was given."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT, VENV_BIN, Output, free_port, runs, wait_for_store, write_yaml

# Network namespaces need root; one xdist worker runs them all (each claims a private subnet of the root namespace).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("netns")]

LAUNCH = ROOT / "scripts" / "launch-workers.sh"
DOCS = ROOT / "docs" / "launch"
TOKEN = "launch-token-0123456789abcdef"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "ftp_proxy")

SWEEP = """# mnist-exp sweep la.yaml --serve GATEWAY:PORT --parallel 0
name: la
search_space: SPACE
data: {source: embedded, train_size: 200, test_size: 100, validation_split: 0.2}
training: {epochs: EPOCHS}
tuner: {kind: random, max_trials: TRIALS}
"""


def env(**extra) -> dict:
    """This environment without proxies (a namespace cannot reach one; gRPC would try), plus ``extra``."""
    full = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS and k != "MNIST_EXP_TOKEN"}
    full.update(no_proxy="*", NO_PROXY="*", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return full


def Proc(argv, cwd, env) -> Output:
    return Output(subprocess.Popen(list(map(str, argv)), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))


def cmdlines() -> dict[int, bytes]:
    """Every process's command line (NULs between the words)."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                found[int(d.name)] = (d / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                pass
    return found


def trial_runs():
    return runs(filter_string="tags.`mnist_exp.kind` = 'trial' and tags.`mnist_exp.sweep` = 'la'")


@pytest.fixture
def lan(tmp_path):
    from helpers import hosts

    hosts.require()
    with hosts.Hosts(["h1", "h2"], base=tmp_path / "hosts") as h:
        yield h


def start_chief(store, lan, epochs, trials, lease=6):
    port = free_port()
    exp = write_yaml(store / "la.yaml", SWEEP.replace("SPACE", str(ROOT / "search_spaces" / "small.yaml"))
                     .replace("EPOCHS", str(epochs)).replace("TRIALS", str(trials)))
    chief = Proc([VENV_BIN / "mnist-exp", "sweep", exp, "--serve", f"{lan.gateway}:{port}", "--parallel", "0",
                  "--lease-timeout", lease], store, env(MNIST_EXP_TOKEN=TOKEN))
    wait_for_store(chief.p)
    return chief, f"{lan.gateway}:{port}"


def launch(store, lan, address, names, logs):
    argv = [LAUNCH, "--chief", address, "--tracking-uri", os.environ["MLFLOW_TRACKING_URI"], "--per-host", 1,
            "--threads", 1, "--via", "ip netns exec {host} sh -c", "--mnist-exp", VENV_BIN / "mnist-exp",
            "--logs", logs, *[lan.netns(n) for n in names]]
    return Proc(argv, store, env(MNIST_EXP_TOKEN=TOKEN))


def test_launch_two_hosts_runs_every_trial_once_and_keeps_the_token_off_command_lines(store, lan):
    t0 = time.monotonic()
    chief, address = start_chief(store, lan, epochs=1, trials=4)  # 4: room for the worker that starts second
    logs = store / "worker-logs"
    launcher = launch(store, lan, address, ["h1", "h2"], logs)
    ids = [f"{lan.netns(n)}-0" for n in ("h1", "h2")]
    # While it runs: no command line anywhere carries the token; the workers' (which must be seen) carry their ids.
    seen: set[str] = set()
    while launcher.p.poll() is None:
        for pid, line in cmdlines().items():
            assert TOKEN.encode() not in line, f"pid {pid}: {line!r}"
            if b"worker\0--chief" in line:
                seen.update(i for i in ids if f"\0--id\0{i}".encode() in line)
        time.sleep(0.2)
    assert launcher.wait(10) == 0, launcher.out
    assert chief.wait(120) == 0, chief.out[-3000:]
    assert seen == set(ids), (seen, launcher.out)
    out = launcher.out
    for i, n in zip(ids, ("h1", "h2")):
        assert f"launch-workers.sh: worker {i} on {lan.netns(n)} started (log {logs}/{i}.log)" in out, out
        assert f"launch-workers.sh: worker {i} on {lan.netns(n)} exited 0" in out, out
        log = (logs / f"{i}.log").read_text()
        assert f"worker {i}: sweep la from chief {address}" in log, log[-3000:]
        assert "the chief has no more trials; done" in log, log[-3000:]
    assert out.strip().splitlines()[-1] == "launch-workers.sh: 2 workers done; worst exit code 0", out
    done = {}
    for r in trial_runs():
        assert r.info.status == "FINISHED", (r.info.run_id, r.info.status)
        tid = r.data.tags["mnist_exp.trial_id"]
        assert tid not in done, f"trial {tid} finished twice"
        done[tid] = r.data.tags["mnist_exp.tuner_id"]
    assert sorted(done) == ["0", "1", "2", "3"], done
    assert set(done.values()) == set(ids), done  # both launched workers trained
    print(f"launch test: {time.monotonic() - t0:.1f} s")


def running_trials(worker_ids, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        held = {r.data.tags.get("mnist_exp.tuner_id"): r.info.run_id for r in trial_runs()
                if r.info.status == "RUNNING" and "loss" in r.data.metrics}
        if set(worker_ids) <= set(held):
            return held
        time.sleep(0.3)
    raise AssertionError(f"{worker_ids} did not all start training within {timeout} s")


def gone(lan, name, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not lan.pids(name):
            return
        time.sleep(0.2)
    raise AssertionError(f"host {name}: processes still running: {lan.pids(name)}")


def test_stopping_a_launcher_stops_its_workers_and_their_runs_end_killed(store, lan):
    """h1's launcher gets SIGTERM (as from Ctrl-C), forwarded once to its worker. h2's gets SIGKILL: nothing is
    forwarded, and its worker stops when its stdin ends (as a remote worker does when its ssh client dies)."""
    from mlflow import MlflowClient

    t0 = time.monotonic()
    chief, address = start_chief(store, lan, epochs=50, trials=4)
    logs = store / "worker-logs"
    launchers = {n: launch(store, lan, address, [n], logs) for n in ("h1", "h2")}
    ids = {n: f"{lan.netns(n)}-0" for n in ("h1", "h2")}
    held = running_trials(ids.values())
    t1 = time.monotonic()
    launchers["h1"].p.send_signal(signal.SIGTERM)
    launchers["h2"].p.send_signal(signal.SIGKILL)
    assert launchers["h2"].wait(10) == -signal.SIGKILL
    assert launchers["h1"].wait(60) == 143, launchers["h1"].out
    out = launchers["h1"].out
    assert "launch-workers.sh: SIGTERM: stopping the workers" in out, out
    assert f"launch-workers.sh: worker {ids['h1']} on {lan.netns('h1')} exited 143" in out, out
    for n in ("h1", "h2"):
        gone(lan, n)  # the worker, the shells around it and their stdin watchers
    t2 = time.monotonic()
    client = MlflowClient()
    for i in ids.values():
        assert client.get_run(held[i]).info.status == "KILLED", i
        log = (logs / f"{i}.log").read_text()
        assert "SIGTERM: stopping at the next safe point (again to force)" in log, log[-3000:]
        assert log.count("SIGTERM:") == 1, log[-3000:]  # one signal: the trial stopped cleanly, not forced
    chief.p.send_signal(signal.SIGTERM)
    chief.wait(120)
    print(f"stop test: training after {t1 - t0:.1f} s, stopped in {t2 - t1:.1f} s, "
          f"total {time.monotonic() - t0:.1f} s")


# --- cheap: the launcher with a stand-in for mnist-exp, and the templates --------------------------------

FAKE = """#!/bin/sh
# a stand-in for mnist-exp: prints its words and the token it got, exits with the code its id asks for
for a in "$@"; do printf '[%s]\\n' "$a"; done
printf 'token=%s\\n' "$MNIST_EXP_TOKEN"
case "$*" in *bad*) exit 3 ;; esac
"""


def fake_launch(tmp_path, *hosts_, token=TOKEN, extra=()):
    fake = tmp_path / "fake mnist-exp"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    e = env(MNIST_EXP_TOKEN=token) if token is not None else env()
    return subprocess.run([str(LAUNCH), "--chief", "10.0.0.1:8470", "--via", "env LAUNCH_HOST={host} sh -c",
                           "--mnist-exp", str(fake), "--logs", str(tmp_path / "logs"), *extra, *hosts_],
                          capture_output=True, text=True, env=e, timeout=60, stdin=subprocess.DEVNULL)


def test_words_reach_the_worker_as_given_and_ids_follow_the_name_rule(tmp_path):
    weird = "sqlite:////tmp/it's a \"store\" $HOME `x` & ;.db"
    p = fake_launch(tmp_path, "user@node1", "chief.example", "bad", extra=[
        "--tracking-uri", weird, "--data", "/d/x y.npz", "--per-host", "2", "--threads", "3", "--wait", "5"])
    assert p.returncode == 3, p.stdout + p.stderr
    ids = ["user-node1-0", "user-node1-1", "chf.example-0", "chf.example-1", "bad-0", "bad-1"]
    for i in ids:
        log = (tmp_path / "logs" / f"{i}.log").read_text()
        words = re.findall(r"^\[(.*)\]$", log, re.M)
        assert words == ["worker", "--chief", "10.0.0.1:8470", "--tracking-uri", weird, "--data", "/d/x y.npz",
                         "--threads", "3", "--wait", "5", "--id", i], log
        assert f"token={TOKEN}\n" in log  # from stdin: the launcher's children do not inherit it
        assert re.search(rf"worker {re.escape(i)} on \S+ exited {3 if i.startswith('bad') else 0} ", p.stdout)
    assert p.stdout.strip().splitlines()[-1] == "launch-workers.sh: 6 workers done; worst exit code 3"


@pytest.mark.parametrize("args, token, why", [
    ((), TOKEN, "no HOST given"),
    (("h", "--per-host", "0"), TOKEN, "--per-host 0: must be a whole number from 1"),
    (("h", "--via", "ssh"), TOKEN, "--via 'ssh': must contain {host}"),
    (("h",), None, "MNIST_EXP_TOKEN: not set"),
    (("h",), "short", "MNIST_EXP_TOKEN: at least 16 characters (got 5)"),
    (("a@b", "a-b"), TOKEN, "hosts 'a@b' and 'a-b' both give worker id a-b-0"),
])
def test_bad_usage_is_one_line_and_exit_2(tmp_path, args, token, why):
    p = fake_launch(tmp_path, *args, token=token)
    assert p.returncode == 2 and why in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())


def test_templates_parse():
    import yaml

    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all((DOCS / "k8s-workers.yaml").read_text())}
    secret, service = docs["Secret", "mnist-exp-token"], docs["Service", "mnist-exp-chief"]
    chief, workers = docs["Job", "mnist-exp-chief"]["spec"], docs["Job", "mnist-exp-workers"]["spec"]
    assert service["spec"]["selector"] == chief["template"]["metadata"]["labels"]
    [c] = chief["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--serve") + 1] == f"0.0.0.0:{service['spec']['ports'][0]['port']}"
    assert workers["completionMode"] == "Indexed" and workers["parallelism"] == workers["completions"]
    [w] = workers["template"]["spec"]["containers"]
    assert w["args"][w["args"].index("--id") + 1] == "worker-$(JOB_COMPLETION_INDEX)"
    assert w["args"][w["args"].index("--chief") + 1] == "mnist-exp-chief:8470"
    for container in (c, w):
        env = {e["name"]: e for e in container["env"]}
        assert env["MNIST_EXP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mnist-exp-token", "key": "token"}
        assert "MLFLOW_TRACKING_URI" in env
    assert "token" in secret["stringData"]
    p = subprocess.run(["bash", "-n", str(DOCS / "slurm-workers.sbatch")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "--id \"slurm-${SLURM_ARRAY_JOB_ID}-${SLURM_ARRAY_TASK_ID}\"" in (DOCS / "slurm-workers.sbatch").read_text()
    p = subprocess.run(["bash", "-n", str(LAUNCH)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
