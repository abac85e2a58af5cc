"""The Parquet feature store: layout, commit, and the reader later stages use.

A store is a directory on any pyarrow filesystem -- a local path, ``s3://bucket/prefix`` or
``gs://bucket/prefix`` (opened by :func:`atflrec.storage.resolve`: credentials from the environment)::

    STORE/manifest.json             commit point: parameters, param hash, counts, timings, versions,
                                    and the name of the live index file
    STORE/index-<run>.parquet       one row per stored item: item_id, audio_path, sha256 (of the
                                    audio file's bytes), part, n_frames
    STORE/mel<N>/part-*.parquet     item_id, n_frames, features: one fixed-size binary value per
                                    item holding float16 [frames, N] row-major (frames fixed by the
                                    clip length; dtype and shape in the field's metadata)
    STORE/quarantine.parquet        item_id, path, reason, detail for the last run's rejects

Features are stored as one binary value per item rather than a Parquet list of float16: Parquet
encodes list elements one by one, which made writing five times slower. ``read_feature_table``
turns them back into an Arrow fixed-shape tensor column without copying.

Writers add part files first and the manifest last; readers follow manifest -> index -> parts,
so a run that dies half-way leaves the previous store intact, and the next successful run deletes
the parts nothing refers to. On a local store the index, quarantine and manifest are written to a
temporary file, fsynced and renamed (:mod:`atflrec.io`), and new parts are fsynced before the
manifest names them. One writer per store at a time: :func:`writer_lock` (``STORE/.writer.lock``,
created exclusively, holding host and pid; a lock of a dead process on this host is taken over).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from atflrec.console import say
from atflrec.errors import UserError
from atflrec.io import atomic_write_bytes, atomic_write_text, fsync_dir
from atflrec.storage import resolve

STORE_VERSION = 1
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".writer.lock"
QUARANTINE_FILE = "quarantine.parquet"

INDEX_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("audio_path", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("part", pa.string(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)


class StoreError(UserError, ValueError):
    """A feature store that is missing, unreadable, or lacks what was asked for."""


def part_schema(n_mels: int, frames: int) -> pa.Schema:
    """Schema of a ``mel<n_mels>/`` part file."""
    metadata = {"dtype": "float16", "shape": json.dumps([frames, n_mels])}
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("n_frames", pa.int32(), nullable=False),
            pa.field("features", pa.binary(2 * frames * n_mels), nullable=False, metadata=metadata),
        ]
    )


def write_part(store_uri: str, n_mels: int, part: str, item_ids: list[str], n_frames: list[int],
               features: np.ndarray) -> None:
    """Write one part file of ``mel<n_mels>/``; ``features`` is float16 ``(items, frames, n_mels)``."""
    if features.dtype != np.float16 or features.shape[2] != n_mels:
        raise ValueError(f"expected float16 (items, frames, {n_mels}), got {features.dtype} {features.shape}")
    fs, root = resolve(store_uri)
    directory = f"{root}/mel{n_mels}"
    fs.create_dir(directory, recursive=True)
    schema = part_schema(n_mels, features.shape[1])
    blobs = pa.FixedSizeBinaryArray.from_buffers(
        schema.field("features").type, len(item_ids), [None, pa.py_buffer(np.ascontiguousarray(features))]
    )
    table = pa.table([pa.array(item_ids, pa.string()), pa.array(n_frames, pa.int32()), blobs], schema=schema)
    # Dictionaries and statistics on the feature blobs cost time and buy nothing; float16 log
    # energies hardly compress (zstd saved 9 % at twice the write time), so they are stored plain.
    pq.write_table(table, f"{directory}/{part}", filesystem=fs, compression="none",
                   use_dictionary=["item_id"], write_statistics=["item_id", "n_frames"])


def read_manifest(store_uri: str) -> dict[str, Any] | None:
    """The store's manifest, or None when there is no store there yet."""
    fs, root = resolve(store_uri)
    path = f"{root}/{MANIFEST_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        try:
            manifest = json.loads(stream.read())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("store_version") != STORE_VERSION:
        raise StoreError(f"{path} has store_version {manifest.get('store_version')!r}; expected {STORE_VERSION}")
    return manifest


def read_index(store_uri: str, manifest: dict[str, Any]) -> pa.Table:
    fs, root = resolve(store_uri)
    return pq.read_table(f"{root}/{manifest['index']}", filesystem=fs, schema=INDEX_SCHEMA)


class StoreLocked(StoreError):
    """Another run is writing this store."""


@contextlib.contextmanager
def writer_lock(store_uri: str):
    """Hold the store's writer lock for a run (local stores; a remote store has no lock, and the
    run says so). A second run fails at once, naming the holder, instead of deleting the first
    run's parts; a lock left by a dead process on this host is taken over."""
    if "://" in store_uri:
        say(f"note: {store_uri} is remote: no writer lock; run one `atflrec features` at a time on it")
        yield
        return
    root = os.path.abspath(store_uri)
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK_FILE)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None and holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # its writer died: take the lock over
                continue
            raise StoreLocked(f"the feature store {root} is being written by another run ({holder or 'unknown'}; "
                              f"lock file {path}). Wait for it, or delete the lock file if that run is gone") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
            f.flush()
            os.fsync(f.fileno())
        break
    else:
        raise StoreLocked(f"cannot take the writer lock {path}")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _lock_holder(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _table_bytes(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


def commit(store_uri: str, manifest: dict[str, Any], index: pa.Table, quarantine: pa.Table) -> None:
    """Make a run's results the store's content, then delete what no longer belongs to it."""
    fs, root = resolve(store_uri)
    fs.create_dir(root, recursive=True)
    index_path = f"{root}/{manifest['index']}"
    local = isinstance(fs, pafs.LocalFileSystem)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if local:
        # Durable before the manifest names them: this run's parts, the index, the quarantine.
        run_id = manifest.get("last_run", {}).get("run_id")
        for part in sorted(set(index.column("part").to_pylist())):
            for n_mels in manifest["params"]["n_mels"]:
                path = os.path.join(root, f"mel{n_mels}", part)
                if run_id and run_id in part and os.path.isfile(path):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        for n_mels in manifest["params"]["n_mels"]:
            fsync_dir(os.path.join(root, f"mel{n_mels}"))
        if not os.path.isfile(index_path):
            atomic_write_bytes(index_path, _table_bytes(index.cast(INDEX_SCHEMA)))
        atomic_write_bytes(f"{root}/{QUARANTINE_FILE}", _table_bytes(quarantine.cast(QUARANTINE_SCHEMA)))
        atomic_write_text(f"{root}/{MANIFEST_FILE}", text)  # the commit point
    else:
        if fs.get_file_info(index_path).type != pafs.FileType.File:
            pq.write_table(index.cast(INDEX_SCHEMA), index_path, filesystem=fs)
        pq.write_table(quarantine.cast(QUARANTINE_SCHEMA), f"{root}/{QUARANTINE_FILE}", filesystem=fs)
        # Write-then-move: readers never see a half-written manifest.
        temporary = f"{root}/{MANIFEST_FILE}.tmp"
        with fs.open_output_stream(temporary) as stream:
            stream.write(text.encode())
        fs.move(temporary, f"{root}/{MANIFEST_FILE}")
    _collect_garbage(fs, root, manifest, set(index.column("part").to_pylist()))


def _collect_garbage(fs: pafs.FileSystem, root: str, manifest: dict[str, Any], live_parts: set[str]) -> None:
    """Delete parts no index row names, old index files, and tables of Mel counts no longer kept."""
    kept_mels = set(manifest["params"]["n_mels"])
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.Directory and re.fullmatch(r"mel\d+", info.base_name):
            keep = int(info.base_name[3:]) in kept_mels
            remaining = 0
            for part in fs.get_file_info(pafs.FileSelector(info.path)):
                if part.base_name.startswith("part-") and (not keep or part.base_name not in live_parts):
                    fs.delete_file(part.path)
                else:
                    remaining += 1
            if not keep and not remaining:
                fs.delete_dir(info.path)
        elif re.fullmatch(r"index-.+\.parquet", info.base_name) and info.base_name != manifest["index"]:
            fs.delete_file(info.path)


def read_quarantine(store_uri: str) -> pa.Table:
    """The last run's quarantined items (item_id, path, reason, detail)."""
    fs, root = resolve(store_uri)
    return pq.read_table(f"{root}/{QUARANTINE_FILE}", filesystem=fs, schema=QUARANTINE_SCHEMA)


def read_feature_table(store_uri: str, n_mels: int, item_ids: Iterable[str] | None = None) -> pa.Table:
    """Stored features for one Mel-bin count: item_id, n_frames, and features as an Arrow
    fixed-shape tensor column ``[frames, n_mels]`` of float16.

    ``item_ids`` restricts the rows; ids that are not stored (quarantined, unknown) are absent.
    Frames past ``n_frames`` are end padding of a clip shorter than the clip length.
    """
    manifest = read_manifest(store_uri)
    if manifest is None:
        raise StoreError(f"no feature store at {store_uri!r} (run `atflrec features` first)")
    params = manifest["params"]
    if n_mels not in params["n_mels"]:
        raise StoreError(f"the store at {store_uri!r} holds Mel-bin counts {params['n_mels']}, not {n_mels}")
    index = read_index(store_uri, manifest)
    if item_ids is not None:
        index = index.filter(pc.is_in(index.column("item_id"), pa.array(list(item_ids), pa.string())))
    fs, root = resolve(store_uri)
    tables = [
        pq.read_table(f"{root}/mel{n_mels}/{row['part']}", filesystem=fs,
                      filters=pc.field("item_id").isin(row["item_id_list"]))
        for row in index.group_by("part").aggregate([("item_id", "list")]).to_pylist()
    ]
    frames = params["frames"]
    table = pa.concat_tables(tables) if tables else part_schema(n_mels, frames).empty_table()
    blobs = table.column("features").combine_chunks()
    values = np.frombuffer(blobs.buffers()[1], dtype=np.float16, count=len(blobs) * frames * n_mels,
                           offset=blobs.offset * 2 * frames * n_mels)
    tensors = pa.FixedShapeTensorArray.from_numpy_ndarray(values.reshape(len(blobs), frames, n_mels))
    return table.set_column(2, "features", tensors)


def load_features(store_uri: str, n_mels: int, item_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Stored features by item id, each float16 ``(n_frames, n_mels)`` without end padding."""
    table = read_feature_table(store_uri, n_mels, item_ids)
    if table.num_rows == 0:
        return {}
    features = table.column("features").combine_chunks().to_numpy_ndarray()
    n_frames = table.column("n_frames").to_pylist()
    return {item: features[i, : n_frames[i]] for i, item in enumerate(table.column("item_id").to_pylist())}
