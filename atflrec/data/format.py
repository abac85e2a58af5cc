"""Dataset format v1: a directory with ``items.parquet``, ``interactions.parquet`` and audio files.

``items.parquet``
    item_id (string, unique), title (string), tags (string or list<string>),
    audio_path (string, relative to the dataset directory, must stay inside it).
``interactions.parquet``
    user_id (string), item_id (string, must name an item), label (int8 in {0, 1}),
    timestamp (int64, seconds since the epoch; orders each user's history).
``dataset.json`` (optional)
    format version, how the dataset was made, and free-form provenance.

Everything that reads a dataset goes through this module so the format lives in one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from atflrec.errors import UserError

FORMAT_VERSION = 1
ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
METADATA_FILE = "dataset.json"

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),
        pa.field("audio_path", pa.string(), nullable=False),
    ]
)
INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)
# Columns a reader requires, with the type families it accepts (tags may be a string or a list).
REQUIRED_ITEM_COLUMNS = ("item_id", "title", "tags", "audio_path")
REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id", "label", "timestamp")


class DatasetError(UserError, ValueError):
    """A dataset that cannot be read as format v1; the message says what is wrong."""


class UnsafeAudioPath(ValueError):
    """An audio path that is absolute, climbs out with ``..``, or resolves outside the dataset."""


def resolve_audio_path(root: str | Path, relative: str) -> Path:
    """Resolve ``relative`` inside ``root``, refusing anything that escapes it (symlinks included)."""
    if not relative:
        raise UnsafeAudioPath("audio_path is empty")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise UnsafeAudioPath(f"audio_path {relative!r} is absolute")
    parts = Path(relative).parts
    if ".." in parts:
        raise UnsafeAudioPath(f"audio_path {relative!r} contains '..'")
    root_real = Path(root).resolve()
    target = (root_real / relative).resolve()
    if target != root_real and root_real not in target.parents:
        raise UnsafeAudioPath(f"audio_path {relative!r} resolves outside the dataset (symlink to {target})")
    return target


def normalise_tags(value: Any) -> list[str]:
    """Tags as a list of strings, from a list or a comma/semicolon-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.replace(";", ",").split(",") if t.strip()]
    return [str(t) for t in value]


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: its root directory and both tables, normalised to the v1 schemas."""

    root: Path
    items: pa.Table
    interactions: pa.Table

    def audio_path(self, relative: str) -> Path:
        return resolve_audio_path(self.root, relative)


def items_table(item_ids: list[str], titles: list[str], tags: list[Any], audio_paths: list[str]) -> pa.Table:
    return pa.table(
        {
            "item_id": item_ids,
            "title": titles,
            "tags": [normalise_tags(t) for t in tags],
            "audio_path": audio_paths,
        },
        schema=ITEMS_SCHEMA,
    )


def interactions_table(user_ids: list[str], item_ids: list[str], labels: list[int], timestamps: list[int]) -> pa.Table:
    return pa.table(
        {"user_id": user_ids, "item_id": item_ids, "label": labels, "timestamp": timestamps},
        schema=INTERACTIONS_SCHEMA,
    )


def write_dataset(root: str | Path, items: pa.Table, interactions: pa.Table,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Write both tables (cast to the v1 schemas) and ``dataset.json`` into ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(items.cast(ITEMS_SCHEMA), root / ITEMS_FILE)
    pq.write_table(interactions.cast(INTERACTIONS_SCHEMA), root / INTERACTIONS_FILE)
    meta = {"format_version": FORMAT_VERSION, **(metadata or {})}
    (root / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return root


def is_text_type(kind: pa.DataType) -> bool:
    """String, large string, or dictionary-encoded string."""
    if pa.types.is_dictionary(kind):
        return is_text_type(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _read_table(path: Path, required: tuple[str, ...]) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path.name} is missing from {path.parent}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"{path.name} is not a readable Parquet file: {exc}") from exc
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path.name} lacks required column(s): {', '.join(missing)}")
    return table


def read_items(root: str | Path) -> pa.Table:
    """``items.parquet`` with tags normalised to list<string>; raises DatasetError if unusable."""
    table = _read_table(Path(root) / ITEMS_FILE, REQUIRED_ITEM_COLUMNS)
    tags_type = table.schema.field("tags").type
    if not (pa.types.is_list(tags_type) or pa.types.is_large_list(tags_type)):
        if not is_text_type(tags_type):
            raise DatasetError(f"{ITEMS_FILE} has tags of type {tags_type}; expected string or list<string>")
        tags = [normalise_tags(v) for v in table.column("tags").to_pylist()]
        table = table.set_column(table.schema.get_field_index("tags"), "tags", pa.array(tags, pa.list_(pa.string())))
    try:
        return table.select(list(REQUIRED_ITEM_COLUMNS)).cast(ITEMS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DatasetError(f"{ITEMS_FILE} has columns of the wrong type: {exc}") from exc


def read_interactions(root: str | Path) -> pa.Table:
    """``interactions.parquet`` cast to the v1 schema; raises DatasetError if unusable."""
    table = _read_table(Path(root) / INTERACTIONS_FILE, REQUIRED_INTERACTION_COLUMNS)
    try:
        return table.select(list(REQUIRED_INTERACTION_COLUMNS)).cast(INTERACTIONS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DatasetError(f"{INTERACTIONS_FILE} has columns of the wrong type: {exc}") from exc


def load_dataset(root: str | Path) -> Dataset:
    """Read a dataset directory; raises DatasetError when it cannot be read as format v1."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {str(root)!r} does not exist")
    return Dataset(root=root, items=read_items(root), interactions=read_interactions(root))
