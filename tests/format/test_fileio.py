"""perfusion_format's file primitives: bounded reads and atomic writes."""

from __future__ import annotations

import os

import pytest

import perfusion_format as pf


def test_read_bounded_refuses_a_file_over_the_limit(tmp_path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 10)
    assert pf.read_bounded(path, 10) == b"x" * 10
    with pytest.raises(pf.FormatError) as refused:
        pf.read_bounded(path, 9)
    assert refused.value.code == "FILE_TOO_LARGE"


def test_write_atomic_sets_the_mode_asked_for(tmp_path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    pf.write_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_new_file_gets_what_the_umask_allows(tmp_path) -> None:
    umask = os.umask(0o027)
    try:
        pf.write_atomic(tmp_path / "new", b"data")
    finally:
        os.umask(umask)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o640


def test_the_temporary_file_can_live_in_another_folder(tmp_path) -> None:
    uploads, blobs = tmp_path / "uploads", tmp_path / "blobs"
    uploads.mkdir()
    blobs.mkdir()
    pf.write_atomic(blobs / "blob", b"data", folder=uploads)
    assert (blobs / "blob").read_bytes() == b"data"
    assert list(uploads.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    names: list[str] = []

    def fail(source: str, _target: object) -> None:
        names.append(os.path.basename(source))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        pf.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert len(names) == 1 and pf.is_temporary(names[0]) and names[0].startswith(".file.")
