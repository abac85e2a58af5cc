"""atflrec.io: atomic, durable writes (temporary sibling, fsync, rename or exclusive link)."""

from __future__ import annotations

import pytest

from atflrec.io import atomic_write_bytes, atomic_write_text


def test_replace_and_exclusive_writes_leave_no_temporary_files(tmp_path) -> None:
    target = tmp_path / "sub" / "file.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"three", exclusive=True)
    assert target.read_text() == "two"
    atomic_write_bytes(tmp_path / "sub" / "new.bin", b"\x00\x01", exclusive=True)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["file.json", "new.bin"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("atflrec.io.os.fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
