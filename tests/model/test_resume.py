"""A fit resumes from its last completed epoch: `mnist-exp train` killed with SIGKILL between epochs continues in
the same run, with the same result as a fit never interrupted (TensorFlow's op determinism on); a damaged or
foreign checkpoint is skipped with one line and the fit starts over."""

import json
from pathlib import Path

import pytest

from helpers import cli, cli_here, runs

TRAIN = ["train", "--set", "data.train_size=300", "--set", "data.test_size=100", "--epochs", "4",
         "--set", "hp.filters_1=16"]
DETERMINISTIC = {"TF_DETERMINISTIC_OPS": "1"}


def curve(run_id: str, metric: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, metric))


def killed_at(point: str, args=TRAIN) -> str:
    proc = cli(*args, env={**DETERMINISTIC, "MNIST_EXP_FAULT": point})
    assert proc.returncode == -9, proc.stderr[-2000:]
    return proc.stdout


def checkpoint_files(run) -> list[Path]:
    root = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoint"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.slow
def test_train_killed_after_epoch_2_resumes_in_the_same_run_with_the_uninterrupted_result(store):
    cli(*TRAIN, env=DETERMINISTIC, check=0)
    [whole] = runs()
    assert "mnist_exp.checkpoint" not in whole.data.tags and not checkpoint_files(whole)  # removed at the end

    out = killed_at("epoch_checkpointed@2")  # epoch 2 checkpointed; killed before its metrics were logged
    assert "epoch 1/4" in out and "epoch 2/4" not in out
    [killed] = [r for r in runs() if r.info.run_id != whole.info.run_id]
    assert json.loads(killed.data.tags["mnist_exp.checkpoint"])["meta"] == {"epoch": 2}

    proc = cli(*TRAIN, env=DETERMINISTIC, check=0)
    assert f"run {killed.info.run_id} resumed after epoch 2" in proc.stdout
    assert "epoch 3/4" in proc.stdout and "epoch 2/4" not in proc.stdout  # no epoch trained twice
    assert len(runs()) == 2
    resumed = next(r for r in runs() if r.info.run_id == killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["mnist_exp.resumed_from_epoch"] == "2"
    assert "mnist_exp.error" not in resumed.data.tags and "mnist_exp.checkpoint" not in resumed.data.tags
    assert not checkpoint_files(resumed)
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):  # every epoch once, as the fit never stopped
        got, want = curve(resumed.info.run_id, metric), curve(whole.info.run_id, metric)
        assert [s for s, _ in got] == [1, 2, 3, 4], metric
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6), metric
    for metric in ("test_accuracy", "test_loss", "epochs_run"):
        assert resumed.data.metrics[metric] == pytest.approx(whole.data.metrics[metric], abs=1e-6), metric


@pytest.mark.slow
def test_a_damaged_then_a_foreign_checkpoint_is_skipped_with_one_line_and_the_fit_starts_over(store):
    def folder(run):
        return Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoint" / "epoch-0001"

    killed_at("epoch_checkpointed@1")
    [first] = runs()
    weights = folder(first) / "state.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])  # damaged: a truncated weights file
    out = killed_at("epoch_checkpointed@1")  # skipped with one line; a new run, killed in its turn after epoch 1
    said = [ln for ln in out.splitlines() if "is not used" in ln]
    assert said == [f"[train baseline]: the checkpoint of run {first.info.run_id} (epoch 1) is not used: weights "
                    "unreadable (OSError); starting over"]
    [second] = [r for r in runs() if r.info.run_id != first.info.run_id]
    state = json.loads((folder(second) / "state.json").read_text())
    (folder(second) / "state.json").write_text(json.dumps({**state, "identity": "another fit"}))  # foreign

    proc = cli_here(*TRAIN, check=0)
    said = [ln for ln in proc.stdout.splitlines() if "is not used" in ln]
    assert said == [f"[train baseline]: the checkpoint of run {second.info.run_id} (epoch 1) is not used: it was made "
                    "for other hyperparameters or data; starting over"]
    assert "epoch 1/4" in proc.stdout
    by_id = {r.info.run_id: r for r in runs()}
    [new] = [r for i, r in by_id.items() if i not in (first.info.run_id, second.info.run_id)]
    assert new.info.status == "FINISHED" and [s for s, _ in curve(new.info.run_id, "loss")] == [1, 2, 3, 4]
    for skipped in (first, second):  # KILLED, their checkpoints gone: never used
        run = by_id[skipped.info.run_id]
        assert run.info.status == "KILLED" and "mnist_exp.checkpoint" not in run.data.tags and not checkpoint_files(run)
