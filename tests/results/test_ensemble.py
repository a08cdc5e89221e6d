"""promote --ensemble: members chosen on validation only, one pyfunc model that averages them, promoted through
the guard, built exactly once whatever fails."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient

from mnist_exp.cli import main
from mnist_exp.results import ensemble_select

from helpers import ROOT, VENV_BIN, cli, cli_here, runs, served_predictions, write_yaml

ENSEMBLE_SWEEP = f"""# mnist-exp sweep ens.yaml
name: ens
search_space: {ROOT / "search_spaces" / "small.yaml"}
seed: 5
data: {{source: embedded, train_size: 600, test_size: 200, validation_split: 0.2}}
training: {{epochs: 2}}
tuner: {{kind: random, max_trials: 4, ensemble: 3}}
"""


# --- selection, on synthetic probabilities whose answer is known --------------------------------------------


def _onehot(y, p_right):
    """Probabilities that give each digit's label ``p_right`` (the rest spread evenly)."""
    out = np.full((len(y), 10), 0.0)
    out[:] = ((1 - p_right) / 9)[:, None]
    out[np.arange(len(y)), y] = p_right
    return out


def _library(n=500, seed=0):
    """A is the best model but unsure on a region R (a fifth of the digits); C copies A's weakness, slightly worse;
    B is poor except on R, where it is sure; D is poor everywhere. The known answer: A, then B (the model that
    corrects A's mistakes), never C (the near-duplicate of the best) nor D."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    region = np.arange(n) < n // 5
    a = _onehot(y, np.where(region, 0.2, 0.9))
    c = _onehot(y, np.where(region, 0.2, 0.88))
    b = _onehot(y, np.where(region, 0.9, 0.5))
    d = _onehot(y, np.full(n, 0.6))
    return [a, c, b, d], y  # as a sweep's objective orders them


def test_greedy_selection_finds_the_known_best_pair():
    lib, y = _library()
    sel = ensemble_select.greedy(lib, y, max_members=3, steps=12)
    assert sel.members == [0, 2]  # A and B
    w = sel.weights()
    assert w[0] > w[2] > 0 and w[0] + w[2] == pytest.approx(1.0)
    assert sel.val_loss < ensemble_select.log_loss(lib[0], y) - 0.01  # better than the best model alone
    one = ensemble_select.greedy(lib, y, max_members=1, steps=4)
    assert one.members == [0]  # one member: the best single model, weight 1


def test_greedy_selection_respects_the_member_limit():
    lib, y = _library()
    lib = lib + [_onehot(y, np.full(len(y), 0.7)) for _ in range(5)]
    for k in (1, 2, 3):
        assert len(ensemble_select.greedy(lib, y, max_members=k, steps=4 * k).members) <= k


# --- a real tiny sweep with tuner.ensemble, shared by the tests below ---------------------------------------


@pytest.fixture(scope="module")
def ens_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    path = write_yaml(root / "ens.yaml", ENSEMBLE_SWEEP)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}
    cli("sweep", path, check=0, env=env, timeout=900)  # its own process: MLflow caches artifact stores by run id
    return root


@pytest.fixture
def ens_store(ens_template, tmp_path, monkeypatch):
    """A private copy of the ensemble sweep's store (database and artifacts)."""
    shutil.copytree(ens_template / "mlruns", tmp_path / "mlruns")
    db = tmp_path / "mlruns" / "mlflow.db"
    import sqlite3

    con = sqlite3.connect(db)  # artifact locations point into the copy, so a test may damage them
    for table, col in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                       ("model_versions", "storage_location"), ("logged_models", "artifact_location")):
        try:
            con.execute(f"UPDATE {table} SET {col} = REPLACE({col}, ?, ?)", (str(ens_template), str(tmp_path)))
        except sqlite3.OperationalError:
            pass
    con.commit()
    con.close()
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return tmp_path


def _trials():
    return [r for r in runs(filter_string="tags.`mnist_exp.kind` = 'trial'") if r.info.status == "FINISHED"]


def _ensemble_runs():
    return runs(filter_string="tags.`mnist_exp.kind` = 'ensemble'")


def _versions():
    return MlflowClient().search_model_versions("name='mnist-cnn'")


@pytest.mark.slow
def test_every_trial_keeps_its_validation_and_test_probabilities(ens_store):
    from mnist_exp.tracking import probabilities

    trials = _trials()
    assert len(trials) == 4
    y_val = None
    for r in trials:
        probs, labels = probabilities.load(r.info.run_id, "validation")
        assert probs.shape == (120, 10) and labels.shape == (120,)  # 20% of 600 digits
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        y_val = labels if y_val is None else y_val
        assert np.array_equal(labels, y_val)  # one split for the whole sweep
        test, y_test = probabilities.load(r.info.run_id, "test")
        assert test.shape == (200, 10)
        # the kept test probabilities are the ones the run's test accuracy was computed from
        assert (test.argmax(axis=1) == y_test).mean() == pytest.approx(r.data.metrics["test_accuracy"])


@pytest.mark.slow
def test_promote_ensemble_registers_one_model_that_averages_its_members(ens_store, embedded, capsys):
    import mlflow

    assert main(["promote", "ens", "--dry-run"]) == 0  # tuner.ensemble: 3 is promote's default for this sweep
    assert not _ensemble_runs() and not _versions()  # a dry run writes nothing
    assert main(["promote", "ens"]) == 0
    out = capsys.readouterr().out
    assert "ensemble of" in out and "-> version 1" in out
    [run] = _ensemble_runs()
    assert run.info.status == "FINISHED"
    v = MlflowClient().get_model_version_by_alias("mnist-cnn", "champion")
    members = v.tags["mnist_exp.ensemble_of"].split(",")
    assert 1 <= len(members) <= 3 and v.tags["mnist_exp.run_id"] == run.info.run_id
    trial_ids = {r.info.run_id for r in _trials()}
    assert set(members) <= trial_ids
    for m in members:  # the version's page links each member's run
        assert f"runs/{m})" in v.description
    assert "latency per image" in v.description and "size on disk" in v.description
    parent = MlflowClient().get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["mnist_exp.ensemble_run_id"] == run.info.run_id
    assert parent.data.metrics["ensemble_test_accuracy"] == pytest.approx(float(v.tags["metric.test_accuracy"]))
    assert {"latency_ms_per_image_batch1", "single_latency_ms_per_image_batch256", "size_bytes"} <= set(run.data.metrics)

    # the registered model is the weighted mean of its members' probabilities, on digits it never saw
    weights = {p.split(":")[0]: float(p.split(":")[1]) for k, p in run.data.params.items()
               if k.startswith("ensemble.member_")}
    from mnist_exp.model.data import to_model_inputs

    x = to_model_inputs(embedded["x_test"][-32:])
    got = np.asarray(mlflow.pyfunc.load_model("models:/mnist-cnn@champion").predict(x))
    want = sum(w * np.asarray(mlflow.pyfunc.load_model(f"runs:/{m}/model").predict(x)) for m, w in weights.items())
    assert got.shape == (32, 10)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # and its test accuracy is the one the guard judged, from the members' kept test probabilities
    assert float(v.tags["metric.test_accuracy"]) == pytest.approx(run.data.metrics["test_accuracy"])

    # promoting again reuses the run and the version; --ensemble 1 promotes what promote alone promotes
    assert main(["promote", "ens"]) == 0
    assert len(_ensemble_runs()) == 1 and len(_versions()) == 1
    capsys.readouterr()
    assert main(["promote", "ens", "--ensemble", "1", "--dry-run", "--force"]) == 0  # (the ensemble tests better)
    line = capsys.readouterr().out.splitlines()[-2]
    assert "ensemble" not in line and line.startswith("ens trial ")

    # mnist-exp predict and mlflow models serve answer with the ensemble as with any model
    np.savez(ens_store / "digits.npz", x=embedded["x_test"][:3])
    proc = cli_here("predict", ens_store / "digits.npz", "--json", check=0)
    answers = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert len(answers) == 3 and all(len(a["probabilities"]) == 10 for a in answers)
    served = served_predictions("models:/mnist-cnn@champion", x[:8], VENV_BIN)
    assert served.shape == (8, 10)  # the single model's answer shape
    np.testing.assert_allclose(served, got[:8], atol=1e-5)



@pytest.mark.slow
def test_test_labels_cannot_change_which_members_are_chosen(ens_store):
    """The members depend on validation probabilities only: scrambling every trial's kept test probabilities
    and labels changes the ensemble's test score, never its members or weights."""
    from mnist_exp.results import ensemble, promote
    from mnist_exp.tracking import probabilities

    eid = MlflowClient().get_experiment_by_name("mnist-exp").experiment_id
    single = promote.best_candidate(eid, "ens")
    parent = MlflowClient().get_run(single.parent_run_id)
    before = ensemble.plan(eid, parent, 3, single.objective, True)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    for r in _trials():
        probs = rng.dirichlet(np.ones(10), 200)
        probabilities.log({"test": (probs, y)}, run_id=r.info.run_id)
    after = ensemble.plan(eid, parent, 3, single.objective, True)
    assert [(m.run_id, m.weight) for m in after.members] == [(m.run_id, m.weight) for m in before.members]
    assert after.test_accuracy != before.test_accuracy


@pytest.mark.slow
def test_a_member_without_its_model_is_one_line_and_nothing_registered(ens_store):
    from mnist_exp.results import ensemble, promote

    eid = MlflowClient().get_experiment_by_name("mnist-exp").experiment_id
    single = promote.best_candidate(eid, "ens")
    plan = ensemble.plan(eid, MlflowClient().get_run(single.parent_run_id), 3, single.objective, True)
    victim = plan.members[-1].run_id
    logged_model = plan.members[-1].model_uri.rsplit("/", 1)[-1]  # models:/m-…: MLflow 3 keeps it by its own id
    shutil.rmtree(ens_store / "mlruns" / "artifacts" / "models" / logged_model / "artifacts")
    proc = cli_here("promote", "ens")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and victim in err[0] and "nothing registered" in err[0]
    assert not _versions() and not [r for r in _ensemble_runs() if r.info.status == "FINISHED"]


@pytest.mark.slow
def test_a_promotion_killed_while_building_the_ensemble_leaves_one_run_and_one_version(ens_store):
    for point in ("ensemble_run_started", "ensemble_logged"):  # killed at one point, then at the other
        proc = cli("promote", "ens", env={"MNIST_EXP_FAULT": point})
        assert proc.returncode == -9 and f"[fault point {point}: SIGKILL]" in proc.stderr
        assert not _versions() and not [r for r in _ensemble_runs() if r.info.status == "FINISHED"]
    cli_here("promote", "ens", check=0)  # breaks the dead promotion's lock at once (same machine), builds again
    ens = _ensemble_runs()
    assert [r.info.status for r in ens] == ["FINISHED"]  # the half-built runs are gone, not kept beside it
    [v] = _versions()
    assert v.tags["mnist_exp.run_id"] == ens[0].info.run_id


@pytest.mark.slow
def test_the_guard_judges_the_ensemble_before_anything_is_built(ens_store):
    assert main(["promote", "ens", "--ensemble", "1"]) == 0
    [v] = _versions()
    MlflowClient().set_model_version_tag("mnist-cnn", v.version, "metric.test_accuracy", "1.0")  # a champion at 100%
    proc = cli_here("promote", "ens")
    assert proc.returncode == 1 and "refused" in proc.stderr
    assert not _ensemble_runs() and len(_versions()) == 1


@pytest.mark.slow
def test_a_sweep_without_probabilities_is_one_line(swept_store):
    proc = cli_here("promote", "a", "--ensemble", "3")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "kept validation probabilities" in line and "tuner.ensemble" in line
