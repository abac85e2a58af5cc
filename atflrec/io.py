"""Writes that cannot lose data: a temporary file in the target's directory, fsynced, renamed over
(or linked to) the target, then the directory fsynced. A crash leaves the old file or the new one,
never half of one; a stray ``.*.tmp`` file is the worst left behind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Persist a directory's entries (a rename or link in it); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str | Path) -> Path:
    """A hidden sibling of ``path`` no other writer uses (same filesystem, so renames are atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically and durably.

    ``exclusive``: fail with :class:`FileExistsError` when ``path`` exists (a hard link, so two
    writers racing for one name cannot both win) instead of replacing it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(path)
    try:
        with open(staging, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(staging, path)
        else:
            os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, exclusive: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), exclusive)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (after writing a directory of files)."""
    root = Path(root)
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)
