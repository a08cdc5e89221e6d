"""A team server with auth (the default of ``mnist-exp server``) over HTTPS with a private CA made here: MLflow's
basic-auth app on PostgreSQL, users made with ``mnist-exp server-users``, every command signing in and trusting the
CA by MLflow's own conventions. A client that does not trust the CA is refused in one line. Strangers and wrong passwords
are refused, a reader compares and predicts but cannot promote, a granted user promotes (the version says who),
passwords rotate, a dead teammate's sweep lease is taken over, and no secret lands in a process list, a log or the
store."""

import base64
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from helpers import TINY_SWEEP, cli_here, free_port, write_yaml
from helpers.tls import make_ca

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")  # session: built once even if its tests are not run back to back
def team(tmp_path_factory, embedded):
    """The server, its users (reader, runner, runner2, promoter), a tiny sweep run by runner, promoted by promoter."""
    import shutil

    from mnist_exp import server
    from mnist_exp.server.files import read_credentials

    folder = Path(tempfile.mkdtemp(prefix="mnist-exp-auth-"))  # PostgreSQL's own user must enter it (see conftest)
    folder.chmod(0o711)
    tls = make_ca(folder / "tls")
    srv = server.start(folder / "srv", port=free_port(), pg_port=free_port(), tls_cert=tls["cert"], tls_key=tls["key"])
    try:
        assert srv.uri.startswith("https://127.0.0.1:")
        root = tmp_path_factory.mktemp("team")
        write_yaml(root / "tiny.yaml", TINY_SWEEP)
        Image.fromarray(embedded["x_test"][0]).save(root / "digit.png")
        out = SimpleNamespace(srv=srv, root=root, dir=srv.dir, secrets=set(), added={}, ca=tls["ca"])
        for name, level in (("reader", "read"), ("runner", "run"), ("runner2", "run"), ("promoter", "promote")):
            args = ["server-users", srv.dir, "add", name] + (["--level", level] if level != "read" else [])
            out.added[name] = cli_here(*args, check=0).stdout
        out.secrets = {read_credentials(p)[1] for p in [srv.dir / "credentials", *(srv.dir / "users").iterdir()]}
        out.secrets.add((srv.dir / "secret_key").read_text().strip())
        out.secrets.add((srv.dir / "pg.password").read_text().strip())

        def as_user(name, password=None):
            env = {"MLFLOW_TRACKING_URI": srv.uri, "TF_CPP_MIN_LOG_LEVEL": "2",
                   "MLFLOW_TRACKING_SERVER_CERT_PATH": str(tls["ca"])}
            if name:
                path = srv.dir / "credentials" if name == "admin" else srv.dir / "users" / name
                user, secret = read_credentials(path)
                env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or secret)
            return env

        out.as_user = as_user
        cwd = os.getcwd()
        os.chdir(root)
        try:
            out.sweep = cli_here("sweep", "tiny.yaml", env=as_user("runner"), check=0)
            out.promote = cli_here("promote", "tiny", env=as_user("promoter"), check=0)
        finally:
            os.chdir(cwd)
        yield out
    finally:
        srv.stop()
        shutil.rmtree(folder, ignore_errors=True)


def admin_client(team, monkeypatch):
    from mlflow import MlflowClient

    for k, v in team.as_user("admin").items():
        monkeypatch.setenv(k, v)
    return MlflowClient(team.srv.uri, registry_uri=team.srv.uri)


def status(url, ca, user=None, password=None) -> int:
    import ssl

    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cafile=ca)) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_strangers_and_wrong_passwords_are_refused_in_one_line(team, monkeypatch):
    api = f"{team.srv.uri}/api/2.0/mlflow/experiments/search?max_results=5"
    assert status(api, team.ca) == 401
    assert status(api, team.ca, "reader", "not-the-password") == 401
    assert status(api, team.ca, "nobody", "whatever-it-is") == 401
    assert status(f"{team.srv.uri}/health", team.ca) == 200  # load balancers and our own start-up probe need no user

    monkeypatch.chdir(team.root)
    anonymous = cli_here("compare", "tiny", env=team.as_user(None), check=2)
    assert anonymous.stderr == (f"mnist-exp compare: error: tracking server {team.srv.uri} requires a user: set "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or write them to "
                                "~/.mlflow/credentials); an admin adds users: mnist-exp server-users DIR add NAME\n")
    untrusting = cli_here("compare", "tiny", env={**team.as_user("reader"), "MLFLOW_TRACKING_SERVER_CERT_PATH": ""}, check=2)
    assert untrusting.stderr == (f"mnist-exp compare: error: tracking server {team.srv.uri}: its TLS certificate is "
                                 "not trusted (unable to get local issuer certificate); a private CA: export "
                                 "MLFLOW_TRACKING_SERVER_CERT_PATH=/path/to/ca.pem\n")
    wrong = cli_here("compare", "tiny", env=team.as_user("reader", password="not-the-password"), check=2)
    assert wrong.stderr == (f"mnist-exp compare: error: tracking server {team.srv.uri} refused user reader (HTTP 401: "
                            "unknown user or wrong password): check MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)\n")


def test_a_reader_compares_and_predicts_but_cannot_promote(team, monkeypatch):
    client = admin_client(team, monkeypatch)
    monkeypatch.chdir(team.root)
    compare = cli_here("compare", "tiny", env=team.as_user("reader"), check=0)
    assert "sweep tiny: 2 finished trial(s)" in compare.stdout
    predict = cli_here("predict", "--model", "models:/mnist-cnn@champion", "digit.png", "--json", env=team.as_user("reader"),
                  check=0)
    assert '"probabilities"' in predict.stdout

    before = [(v.version, dict(v.tags)) for v in client.search_model_versions("name = 'mnist-cnn'")]
    champion = client.get_model_version_by_alias("mnist-cnn", "champion").version
    for model in ("mnist-cnn", "a-model-nobody-made"):  # MLflow lets anyone make a model: refused before that too
        refused = cli_here("promote", "tiny", "--model-name", model, "--force", env=team.as_user("reader"), check=1)
        assert refused.stderr == (f"mnist-exp promote: error: user reader may not promote to {model} on "
                                  f"{team.srv.uri} (read only); an admin grants it: mnist-exp server-users DIR grant "
                                  "reader promote\n"), refused.stderr
    after = [(v.version, dict(v.tags)) for v in client.search_model_versions("name = 'mnist-cnn'")]
    assert after == before and client.get_model_version_by_alias("mnist-cnn", "champion").version == champion
    names = {m.name for m in client.search_registered_models()}
    assert "a-model-nobody-made" not in names and not [n for n in names if n.endswith(".promotion-lock")]


def test_a_granted_user_promotes_and_the_version_says_who(team, monkeypatch):
    client = admin_client(team, monkeypatch)
    assert "models:/mnist-cnn@champion -> version 1" in team.promote.stdout
    version = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert version.tags["mnist_exp.promoted_by"] == "promoter"
    assert "refused" not in team.sweep.stderr and "finished" in team.sweep.stdout.lower()

    # the admin grants promote to the reader: it may now move the team's alias; back to read, it may not
    monkeypatch.chdir(team.root)
    cli_here("server-users", team.dir, "grant", "reader", "promote", check=0)
    listed = cli_here("server-users", team.dir, "list", check=0).stdout
    assert re.search(r"^reader\tpromote$", listed, re.M) and re.search(r"^admin\tadmin$", listed, re.M), listed
    assert re.search(r"^runner\trun$", listed, re.M), listed
    cli_here("promote", "tiny", "--force", env=team.as_user("reader"), check=0)
    assert client.get_model_version_by_alias("mnist-cnn", "champion").tags["mnist_exp.promoted_by"] == "reader"
    cli_here("server-users", team.dir, "grant", "reader", "read", check=0)
    again = cli_here("promote", "tiny", "--force", env=team.as_user("reader"), check=1)
    assert "user reader may not promote to mnist-cnn" in again.stderr


def test_passwords_rotate(team):
    from mnist_exp.server.auth import AUTH_CACHE_S
    from mnist_exp.server.files import read_credentials

    api = f"{team.srv.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    for name, path in (("reader", team.dir / "users" / "reader"), ("admin", team.dir / "credentials")):
        _, old = read_credentials(path)
        out = cli_here("server-users", team.dir, "passwd", name, check=0).stdout
        assert out == f"user {name}: new password written to {path}\n"
        _, new = read_credentials(path)
        assert new != old and path.stat().st_mode & 0o777 == 0o600
        assert status(api, team.ca, name, new) == 200
        deadline = time.monotonic() + AUTH_CACHE_S + 10  # a worker may remember the old one for AUTH_CACHE_S
        while status(api, team.ca, name, old) != 401:
            assert time.monotonic() < deadline, f"{name}'s old password still accepted"
            time.sleep(1)
        team.secrets |= {new}
    assert cli_here("server-users", team.dir, "list", check=0).returncode == 0  # the admin signs in with the new one


def test_a_dead_teammates_sweep_lease_is_taken_over(team, monkeypatch):
    """runner takes the lease of sweep `shared` and dies without releasing it (kill -9); runner2 resumes the sweep:
    MLflow made runner the only user who may delete that lease, and runner shared it with the team roster."""
    code = ("import os, sys; from mnist_exp.tracking import sweep_lock as s; "
            "b = s.RegistrySweepLock(os.environ['MLFLOW_TRACKING_URI']); "
            "ok, _ = b.try_acquire('shared', s.Holder.me()); print(ok, flush=True); os.kill(os.getpid(), 9)")
    taker = subprocess.run([sys.executable, "-c", code], env={**os.environ, **team.as_user("runner")},
                           capture_output=True, text=True, timeout=120)
    assert taker.returncode == -9 and taker.stdout == "True\n", taker.stderr[-2000:]

    from mnist_exp.tracking import sweep_lock

    for k, v in team.as_user("runner2").items():
        monkeypatch.setenv(k, v)
    backend = sweep_lock.RegistrySweepLock(team.srv.uri)
    ok, broken = backend.try_acquire("shared", sweep_lock.Holder.me())
    assert ok and broken is not None and broken.pid != os.getpid()
    backend.release("shared")

    # a reader is not on the roster: the same dead lease is not theirs to break, said in one line
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **team.as_user("runner")}, timeout=120)
    for k, v in team.as_user("reader").items():
        monkeypatch.setenv(k, v)
    from mnist_exp.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="this user may not break it"):
        sweep_lock.RegistrySweepLock(team.srv.uri).try_acquire("shared", sweep_lock.Holder.me())


def test_no_secret_on_a_command_line_in_a_log_or_in_the_store(team, monkeypatch):
    assert all(len(s) >= 20 for s in team.secrets)
    for path in [team.dir / "credentials", team.dir / "secret_key", team.dir / "pg.password", team.dir / "auth.ini",
                 *(team.dir / "users").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for name, said in team.added.items():
        assert f"their credentials: {team.dir / 'users' / name}" in said
    # every process's command line (the server's workers included), the logs, and what the sweep wrote to MLflow
    cmdlines = []
    for proc in Path("/proc").iterdir():
        try:
            cmdlines.append((proc / "cmdline").read_bytes().decode(errors="replace"))
        except OSError:
            pass
    logs = [p.read_text(errors="replace") for p in (team.dir / "mlflow.log", team.dir / "postgres.log")]
    client = admin_client(team, monkeypatch)
    exp = client.get_experiment_by_name("mnist-exp")
    stored = [str(exp.tags)]
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        stored += [str(run.data.params), str(run.data.tags)]
    for version in client.search_model_versions("name = 'mnist-cnn'"):
        stored += [str(version.tags), version.description or ""]
    said = [team.sweep.stdout, team.sweep.stderr, team.promote.stdout, team.promote.stderr, *team.added.values()]
    for secret in team.secrets:
        for where, texts in (("a command line", cmdlines), ("a log", logs), ("the store", stored), ("output", said)):
            assert not any(secret in t for t in texts), f"a secret in {where}"
