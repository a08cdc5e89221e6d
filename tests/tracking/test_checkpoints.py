"""Checkpoints kept with their run: a version is read only once the pointer names it (a kill between the upload and
the pointer leaves the previous version in force), versions no longer needed go, and removing leaves nothing."""

import os

import pytest

from mnist_exp.runtime import faults
from mnist_exp.tracking import checkpoints


def version_folder(tmp_path, text: str):
    folder = tmp_path / f"v-{text}"
    folder.mkdir()
    (folder / "state.json").write_text(text)
    return folder


def test_the_pointer_moves_only_after_the_upload_and_old_versions_go(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    c = MlflowClient()
    run_id = c.create_run(c.create_experiment("ck")).info.run_id
    checkpoints.write(run_id, "epoch-0001", version_folder(tmp_path, "one"), meta={"epoch": 1})
    checkpoints.write(run_id, "epoch-0002", version_folder(tmp_path, "two"), keep=("epoch-0001",), meta={"epoch": 2})
    got = checkpoints.pointer(c.get_run(run_id))
    assert (got.version, got.keep, got.meta) == ("epoch-0002", ("epoch-0002", "epoch-0001"), {"epoch": 2})
    assert sorted(checkpoints.versions(run_id)) == ["epoch-0001", "epoch-0002"]  # the best epoch's kept

    # killed (here: an error) after epoch 3's upload, before its pointer: epoch 2 stays the checkpoint
    monkeypatch.setenv(faults.ENV, "checkpoint_uploaded:raise")
    with pytest.raises(faults.FaultRaised):
        checkpoints.write(run_id, "epoch-0003", version_folder(tmp_path, "three"), meta={"epoch": 3})
    monkeypatch.delenv(faults.ENV)
    got = checkpoints.pointer(c.get_run(run_id))
    assert got.version == "epoch-0002"
    assert (checkpoints.download(run_id, got.version) / "state.json").read_text() == "two"

    checkpoints.write(run_id, "epoch-0004", version_folder(tmp_path, "four"), meta={"epoch": 4})
    assert checkpoints.versions(run_id) == ["epoch-0004"]  # the half-written epoch 3 and the rest went with it
    checkpoints.remove(run_id)
    assert checkpoints.pointer(c.get_run(run_id)) is None and checkpoints.versions(run_id) == []
    root = c.get_run(run_id).info.artifact_uri.removeprefix("file://")
    assert not os.path.exists(os.path.join(root, "checkpoint"))


@pytest.mark.parametrize("text", [None, "", "not json", '{"version": 1}', '["a"]'])
def test_an_unreadable_pointer_is_no_checkpoint(text):
    assert checkpoints.Pointer.parse(text) is None
