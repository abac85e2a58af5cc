"""Where the stages write: a local path or an object-store URI (``s3://bucket/prefix``, ``gs://bucket/prefix``).

Every stage opens storage through :func:`resolve`, i.e. ``pyarrow.fs.FileSystem.from_uri``: the call
Ray Train and Tune make for a ``storage_path``, so our files and Ray's reach the same store with the
same settings. Credentials and the endpoint come only from each process's environment (the AWS SDK's
chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, a profile or an instance
role; ``AWS_REGION``; ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores), never from a
config: a filesystem built this way holds no key, so none reaches a config, result, log or pickle.

An object store has no rename: one object is replaced atomically, a directory never is. A directory
is published with the file its readers require put last (:func:`publish_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from atflrec.errors import UserError
from atflrec.io import atomic_write_text

# In a remote directory being published; lets the next publish recognise a directory it left half-done.
INCOMPLETE = ".atflrec-incomplete"
_SCHEMES = {"s3": "s3://", "gcs": "gs://"}  # pyarrow filesystem type -> URI scheme


class StorageError(UserError, ValueError):
    """A storage URI that cannot be opened."""


def is_remote(uri: str) -> bool:
    return "://" in uri


def absolute_uri(uri: str) -> str:
    """``uri`` with a local path made absolute, so worker processes resolve it the same way."""
    return uri if is_remote(uri) else os.path.abspath(uri)


def join(uri: str, *names: str) -> str:
    return "/".join([uri.rstrip("/"), *names])


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a URI or local path."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StorageError(f"cannot open {uri!r}: {exc}") from exc


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """The URI of ``path`` on ``fs`` (e.g. a Ray checkpoint's), which :func:`resolve` turns back."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    if fs.type_name not in _SCHEMES:
        raise StorageError(f"no URI scheme known for a {fs.type_name!r} filesystem")
    return _SCHEMES[fs.type_name] + path


def uri_on(reference: str, path: str) -> str:
    """``path``, a path on the filesystem of the URI ``reference`` (as Ray reports one), as a URI."""
    return f"{reference.split('://', 1)[0]}://{path}" if is_remote(reference) and not is_remote(path) else path


def canonical(uri: str) -> str:
    """A form two names of the same place share (local symlinks resolved)."""
    return uri.rstrip("/") if is_remote(uri) else os.path.realpath(uri)


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_text(uri: str) -> str | None:
    """A file's text, or None when there is none."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def read_json_lines(uri: str) -> list[Any]:
    """A JSON-lines log's entries, ``[]`` when there is none; a line cut short by a killed writer is
    skipped."""
    entries = []
    for line in (read_text(uri) or "").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def write_text(uri: str, text: str) -> None:
    """Replace a file whole: locally through a renamed temporary file, remotely in one PUT."""
    if not is_remote(uri):
        atomic_write_text(uri, text)
        return
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


def append_line(uri: str, line: str) -> None:
    """Append one line to a log with one writer. Objects cannot be appended to: remotely the log is
    rewritten whole (logs here hold a line per validation, so this stays small)."""
    if not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with open(uri, "a") as log:
            log.write(line + "\n")
        return
    write_text(uri, (read_text(uri) or "") + line + "\n")


def list_dirs(uri: str, prefix: str = "") -> list[str]:
    """The sub-directories of ``uri`` whose names start with ``prefix``, as URIs (sorted; [] when none)."""
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, allow_not_found=True)
    names = [i.base_name for i in fs.get_file_info(selector)
             if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)]
    return [join(uri, name) for name in sorted(names)]


def list_names(uri: str) -> list[str]:
    """The names directly under ``uri`` ([] when it does not exist)."""
    fs, path = resolve(uri)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def delete_dir(uri: str) -> None:
    """Delete a directory and everything in it; nothing happens when it is not there."""
    if not is_remote(uri):
        shutil.rmtree(uri, ignore_errors=True)
        return
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _upload(local: Path, fs: pafs.FileSystem, path: str) -> None:
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def upload_files(local: Path, uri: str) -> None:
    """Copy every file under ``local`` to the same place under remote ``uri`` (each one PUT)."""
    fs, root = resolve(uri)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        _upload(file, fs, f"{root}/{file.relative_to(local).as_posix()}")


def publish_dir(local: Path, uri: str, last: str) -> None:
    """Replace the remote directory ``uri`` with the files of ``local``; ``last`` (the file its readers
    require, e.g. an artifact's description) goes up last.

    The marker :data:`INCOMPLETE` is put first and the old ``last`` deleted next, so from the first
    change until the new ``last`` is up, ``uri`` holds no ``last`` (readers refuse it) and a
    publish killed half-way is recognisably ours for the next one. Then old files are deleted, the
    new ones put, ``last`` put, the marker deleted."""
    fs, root = resolve(uri)
    with fs.open_output_stream(f"{root}/{INCOMPLETE}"):
        pass
    if fs.get_file_info(f"{root}/{last}").type == pafs.FileType.File:
        fs.delete_file(f"{root}/{last}")
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        elif info.base_name != INCOMPLETE:
            fs.delete_file(info.path)
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.relative_to(local).as_posix() == last)
    for file in files:
        _upload(file, fs, f"{root}/{file.relative_to(local).as_posix()}")
    fs.delete_file(f"{root}/{INCOMPLETE}")


@contextlib.contextmanager
def local_dir(uri: str) -> Iterator[Path]:
    """A local directory whose files end up at ``uri``: ``uri`` itself when it is local; else a
    temporary directory whose files are uploaded when the block ends without an error."""
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="atflrec-upload-") as tmp:
        yield Path(tmp)
        upload_files(Path(tmp), uri)
