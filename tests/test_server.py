"""The team tracking server (``mnist-exp server``: MLflow on PostgreSQL, artifacts proxied): a sweep, compare, promote,
predict and ui through the CLI against a real one, nothing but the tuner's own state written locally, a sweep's lease
kept in the server's registry, and a restart (through the CLI) that keeps everything."""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from PIL import Image

from helpers import SWEEP_HOLDER, TINY_SWEEP, VENV_BIN, cli, cli_here, job_runner_processes, write_yaml


@pytest.fixture(scope="module")
def project(tracking_server, tmp_path_factory, embedded):
    """One tiny sweep through the CLI against the server, then compare, promote and predict; their outputs."""
    root = tmp_path_factory.mktemp("project")  # no mlruns/: the project root is this folder
    digit = embedded["x_test"][0]
    Image.fromarray(digit).save(root / "digit.png")
    write_yaml(root / "tiny.yaml", TINY_SWEEP)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        out = SimpleNamespace(root=root, label=int(embedded["y_test"][0]), wall={})
        for name, args in (("sweep", ["sweep", "tiny.yaml"]), ("compare", ["compare", "tiny"]),
                           ("promote", ["promote", "tiny"]),
                           ("predict", ["predict", "--model", "models:/mnist-cnn@champion", "digit.png", "--json"])):
            t = time.monotonic()
            setattr(out, name, cli_here(*args, check=0).stdout)
            out.wall[name] = round(time.monotonic() - t, 1)
        print(f"wall times (s): {out.wall}")
        yield out


@pytest.fixture
def client(tracking_server, project, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(project.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    # The registry too: MLflow's default registry is the process's tracking URI, which an earlier in-process test may
    # have pointed at its own store.
    return MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)


def sweep_runs(client):
    exp = client.get_experiment_by_name("mnist-exp")
    found = client.search_runs([exp.experiment_id], "tags.`mnist_exp.sweep` = 'tiny'")
    parents = [r for r in found if r.data.tags.get("mnist_exp.kind") == "sweep"]
    trials = [r for r in found if r.data.tags.get("mnist_exp.kind") == "trial"]
    return exp, parents, trials


@pytest.mark.slow
def test_sweep_compare_promote_predict_land_in_the_server(tracking_server, project, client, tmp_path):
    import mlflow

    exp, [parent], trials = sweep_runs(client)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert {t.info.status for t in trials} == {"FINISHED"}
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied: clients never see the server's folder
    assert "sweep tiny: 2 finished trial(s)" in project.compare

    # The champion alias is in the server's registry, on a trial of the sweep; its model comes back through the proxy.
    champion = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert champion.run_id in {t.info.run_id for t in trials}
    assert f"models:/mnist-cnn@champion -> version {champion.version}" in project.promote
    model = mlflow.artifacts.download_artifacts("models:/mnist-cnn@champion", dst_path=str(tmp_path / "model"))
    assert (tmp_path / "model" / "MLmodel").is_file() and "keras" in (tmp_path / "model" / "MLmodel").read_text()
    assert any(p.stat().st_size > 10_000 for p in (tmp_path / "model").rglob("*") if p.is_file()), model
    assert client.list_artifacts(trials[0].info.run_id)  # the trial's own files (plots, curves), listed by the server
    stored = [p for p in (tracking_server.dir / "artifacts").rglob("*") if p.is_file()]
    assert any(p.name == "MLmodel" for p in stored)  # where the proxy keeps them, on the server's machine

    [line] = [json.loads(x) for x in project.predict.strip().splitlines()]
    assert line["digit_found"] and len(line["probabilities"]) == 10 and abs(sum(line["probabilities"]) - 1) < 1e-3
    assert line["label"] == max(range(10), key=lambda i: line["probabilities"][i])
    assert not job_runner_processes(tracking_server.proc.pid)  # MLflow's job runner is off

    # Locally only the sweep's own state (Keras Tuner's files, the sweep's lease): no store, no artifacts.
    local = sorted(p.relative_to(project.root).as_posix() for p in project.root.rglob("*") if p.is_file())
    kept = [p for p in local if p.startswith("mlruns/")]
    assert kept and all(p.startswith(("mlruns/tuner/tiny/", "mlruns/leases/")) for p in kept), kept
    assert not [p for p in local if p.endswith(".db") or "artifacts" in p or "MLmodel" in p], local


@pytest.mark.slow
def test_ui_on_a_tracking_server_prints_its_own_addresses_and_starts_nothing(tracking_server, project, client):
    proc = cli("ui", "--no-browser", check=0, timeout=120)
    exp = client.get_experiment_by_name("mnist-exp")
    assert f"{tracking_server.uri}/#/experiments/{exp.experiment_id}/runs?" in proc.stdout
    assert "viewStateShareKey=mnist-exp-sweeps" in proc.stdout and "nothing started here" in proc.stdout
    assert "mlflow.sharedViewState.mnist-exp-sweeps" in exp.tags  # the saved view, written to the server


@pytest.mark.slow
def test_a_sweep_killed_on_one_machine_resumes_on_another_from_the_state_on_the_server(tracking_server, tmp_path,
                                                                                        monkeypatch):
    """The Keras Tuner state lives with the parent run (search/state_mirror.py). The sweep is killed on "machine" A
    just after its state's archive reached the server and before the pointer moved to it (at the end of trial 0,
    whose run is already FINISHED), then resumed from another folder B that has nothing of A's: B takes the server's
    copy, records that trial without training it again, and ends with each trial once."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_server.uri)
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    for m in (machine_a, machine_b):
        m.mkdir()
        write_yaml(m / "tiny.yaml", TINY_SWEEP)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    sweep = ["sweep", "tiny.yaml", "--name", "moved", "--max-trials", "3"]
    monkeypatch.chdir(machine_a)
    # the 4th push of the state is trial 0's end (its run FINISHED): killed there
    killed = cli(*sweep, env={"MNIST_EXP_FAULT": "after_tuner_state_uploaded@4"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    exp = client.get_experiment_by_name("mnist-exp")
    [parent] = client.search_runs([exp.experiment_id], "tags.`mnist_exp.sweep` = 'moved' and "
                                                       "tags.`mnist_exp.kind` = 'sweep'")
    slot, version, sha = parent.data.tags["mnist_exp.tuner_state"].split()
    assert (slot, version) == ("a", "3")  # v4's archive went to slot b; the pointer never moved to it
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tuner_state")} == {
        "tuner_state/a.tar.gz", "tuner_state/b.tar.gz"}

    monkeypatch.chdir(machine_b)
    # B killed while taking the server's copy (unpacked beside its cache, not yet renamed into place): harmless
    cut = cli(*sweep, env={"MNIST_EXP_FAULT": "after_tuner_state_unpacked"})
    assert cut.returncode == -signal.SIGKILL, cut.stdout[-2000:] + cut.stderr[-2000:]
    assert (machine_b / "mlruns" / "tuner" / ".moved.restoring" / "oracle.json").is_file()
    resumed = cli_here(*sweep, check=0)
    assert "sweep moved: Keras Tuner state taken from the tracking server (version 3)" in resumed.stdout
    assert re.search(r"trial 0: run \w+ had finished before the interruption .*; recorded, not trained again",
                     resumed.stdout), resumed.stdout
    assert "Downloading" not in resumed.stderr  # no progress bar among the sweep's lines
    trials = client.search_runs([exp.experiment_id], "tags.`mnist_exp.sweep` = 'moved' and "
                                                     "tags.`mnist_exp.kind` = 'trial'")
    finished = sorted(t.data.tags["mnist_exp.trial_id"] for t in trials if t.info.status == "FINISHED")
    assert finished == ["0", "1", "2"], [(t.data.tags["mnist_exp.trial_id"], t.info.status) for t in trials]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    # B's cache is the server's copy again, and nothing else was needed from A
    pointer = client.get_run(parent.info.run_id).data.tags["mnist_exp.tuner_state"].split()
    assert int(pointer[1]) > 3
    assert (machine_b / "mlruns" / "tuner" / "moved" / "oracle.json").is_file()
    assert sorted(p.name for p in (machine_b / "mlruns" / "tuner").iterdir()) == ["moved"]

    # a sweep whose state the server does not hold (as 0.9.0 left them) is not restarted from another machine
    client.delete_tag(parent.info.run_id, "mnist_exp.tuner_state")
    (tmp_path / "c").mkdir()
    write_yaml(tmp_path / "c" / "tiny.yaml", TINY_SWEEP)
    monkeypatch.chdir(tmp_path / "c")
    elsewhere = cli_here(*sweep, check=2)
    assert elsewhere.stderr == ("mnist-exp sweep: error: sweep moved: its Keras Tuner state is not on the tracking "
                                "server (the sweep was started by mnist-exp 0.9.0 or earlier): resume it on the machine "
                                "that ran it, or start afresh with --overwrite\n")


@pytest.mark.slow
def test_a_sweeps_lease_lives_in_the_servers_registry_for_every_machine(tracking_server, tmp_path, capsys):
    """Against a server the lease is a registered model there (tracking/registry_lock.py), so a second machine's sweep of the
    name is refused too: a live holder here is refused by name, a killed one taken over at once; a holder on
    another machine is refused while its heartbeat is fresh and taken over once it is older than STALE_S."""
    from mlflow import MlflowClient

    from mnist_exp.runtime.errors import SweepLocked
    from mnist_exp.tracking import keys, liveness, sweep_lock

    uri = tracking_server.uri
    backend = sweep_lock.backend_for(uri)
    assert isinstance(backend, sweep_lock.RegistrySweepLock)
    holder = subprocess.Popen([sys.executable, "-c", SWEEP_HOLDER, uri, "srv"], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepLocked, match=rf"^sweep srv is already running: pid {holder.pid} on host "
                                            rf"{re.escape(liveness.HOST)} since .* \(mnist-exp sweep experiments/quick"):
            with sweep_lock.acquire(uri, "srv"):
                pass
        assert backend.holder("srv").pid == holder.pid
    finally:
        holder.kill()  # no release: the lease stays in the registry
        holder.wait()
    with sweep_lock.acquire(uri, "srv"):
        assert backend.holder("srv").pid == os.getpid()
    assert f"taking over the sweep lock of pid {holder.pid} on host {liveness.HOST}" in capsys.readouterr().err
    client = MlflowClient(uri, uri)
    name = sweep_lock.RegistrySweepLock.PREFIX + "srv"
    assert not client.search_registered_models(f"name = '{name}'")  # released: deleted

    def elsewhere(beat_age: float):
        now = time.time()
        client.create_registered_model(name, tags={
            keys.TAG_LOCK_TOKEN: "0" * 32, keys.TAG_LOCK_SINCE: f"{now - 3600:.3f}", keys.TAG_HOST: "other-machine",
            keys.TAG_PID: "4242", keys.TAG_PROC_START: "x:1", keys.TAG_HEARTBEAT: f"{now - beat_age:.3f}",
            keys.TAG_LOCK_COMMAND: "mnist-exp sweep x.yaml"})

    elsewhere(beat_age=5)  # a sweep on another machine, alive
    with pytest.raises(SweepLocked, match=r"pid 4242 on host other-machine since .* \(mnist-exp sweep x\.yaml\)"):
        with sweep_lock.acquire(uri, "srv"):
            pass
    client.delete_registered_model(name)
    elsewhere(beat_age=liveness.STALE_S + 10)  # its heartbeat stopped: that machine or process is gone
    with sweep_lock.acquire(uri, "srv"):
        pass
    assert "taking over the sweep lock of pid 4242 on host other-machine" in capsys.readouterr().err
    assert not client.search_registered_models(f"name = '{name}'")


@pytest.mark.slow
def test_restart_through_the_cli_keeps_runs_models_and_artifacts(tracking_server, project, client, tmp_path,
                                                                 monkeypatch):
    """Last in this module: it stops the shared server (started without auth, as releases before 0.9.0 ran) and
    starts `mnist-exp server` on the same folder, on every interface: auth comes on, and everything is kept."""
    import mlflow
    from mlflow import MlflowClient

    from mnist_exp.server.files import read_credentials
    from mnist_exp.server.postgres import Postgres

    _, [parent], trials = sweep_runs(client)
    before = {r.info.run_id: r.info.status for r in [parent, *trials]}
    folder, port = tracking_server.dir, tracking_server.port
    tracking_server.stop()
    t = time.monotonic()
    # On every interface, as for workers on other machines: they may name it by this machine's hostname.
    command = ["server", str(folder), "--host", "0.0.0.0", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen([str(VENV_BIN / "mnist-exp"), *command],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # ends if the command exits
            lines.append(line)
            if line.startswith("export MLFLOW_TRACKING_URI="):
                break
        assert lines and lines[-1] == f"export MLFLOW_TRACKING_URI={tracking_server.uri}\n", "".join(lines)
        credentials = folder / "credentials"
        assert f"auth on: the admin's credentials are in {credentials} (made now; mode 0600" in "".join(lines)
        assert credentials.stat().st_mode & 0o777 == 0o600
        user, password = read_credentials(credentials)
        with pytest.raises(urllib.error.HTTPError) as anonymous:  # the folder's runs are no longer open to all
            urllib.request.urlopen(f"{tracking_server.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert anonymous.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        remote = f"from other machines: export MLFLOW_TRACKING_URI=http://{socket.getfqdn()}:{port}"
        assert remote in proc.stdout.readline()
        api = f"{tracking_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
        for host, status in ((socket.gethostname(), 200), ("elsewhere.example.com", 403)):  # MLflow's Host check
            request = urllib.request.Request(api, headers={"Host": f"{host}:{port}", "Authorization": basic})
            try:
                assert urllib.request.urlopen(request, timeout=10).status == status
            except urllib.error.HTTPError as e:
                assert e.code == status, host
        print(f"restart through the CLI: {time.monotonic() - t:.1f} s")
        again = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
        _, [parent2], trials2 = sweep_runs(again)
        assert {r.info.run_id: r.info.status for r in [parent2, *trials2]} == before
        assert again.get_model_version_by_alias("mnist-cnn", "champion").run_id in before
        mlflow.artifacts.download_artifacts("models:/mnist-cnn@champion", dst_path=str(tmp_path))
        assert (tmp_path / "MLmodel").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert "stopping" in rest
    assert not Postgres(folder).running() and not (folder / "mlflow.pid").exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{tracking_server.uri}/health", timeout=2)
