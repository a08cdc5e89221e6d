"""The sweep state mirror's unpacking: only plain files and folders inside the target, on every Python 3.11 (3.11.0-3.11.3
have no tarfile filters, so the same refusal is checked by hand there). The mirror's round trip through a tracking
server, and a sweep moved between machines with it, are in tests/test_server.py."""

from __future__ import annotations

import io
import tarfile

import pytest

from mnist_exp.search.state_mirror import unpack_data_only


def _tar(*members: tuple[str, bytes | None, bytes]) -> tarfile.TarFile:
    """An in-memory archive of (name, file bytes or None, type) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


@pytest.fixture(params=["this Python's", "checked by hand"])
def unpacking(request, monkeypatch):
    """Both ways: the running Python's own (its "data" filter on 3.11.4+), and the check 3.11.0-3.11.3 get."""
    if request.param == "checked by hand":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def test_plain_files_and_folders_are_unpacked(tmp_path, unpacking):
    unpack_data_only(_tar(("trial_00", None, tarfile.DIRTYPE), ("trial_00/trial.json", b"{}", tarfile.REGTYPE),
                          ("oracle.json", b'{"a": 1}', tarfile.REGTYPE)), tmp_path)
    assert (tmp_path / "trial_00" / "trial.json").read_bytes() == b"{}"
    assert (tmp_path / "oracle.json").read_bytes() == b'{"a": 1}'


@pytest.mark.parametrize("name, kind", [("../outside.json", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)])
def test_a_member_outside_the_folder_or_not_a_plain_file_is_refused(tmp_path, unpacking, name, kind):
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(tarfile.TarError):
        unpack_data_only(_tar((name, b"x" if kind == tarfile.REGTYPE else None, kind)), into)
    assert not (tmp_path / "outside.json").exists() and not (into / "link").is_symlink()


def test_an_absolute_member_never_lands_outside_the_folder(tmp_path, unpacking):
    """The "data" filter strips the leading slash; the hand check refuses: either way nothing lands outside."""
    into = tmp_path / "into"
    into.mkdir()
    try:
        unpack_data_only(_tar((f"{tmp_path}/outside.json", b"x", tarfile.REGTYPE)), into)
    except tarfile.TarError:
        pass
    assert not (tmp_path / "outside.json").exists()
