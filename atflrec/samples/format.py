"""The sample format: one Parquet file per split, read, written and drawn from here.

Samples are stored one Parquet file per split (:data:`SAMPLE_SCHEMA`) with ``samples.json``
holding the config and counts. Few-shot training sets are drawn from ``train`` with a seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atflrec.errors import UserError

SPLITS = ("train", "val", "test", "cold")
META_FILE = "samples.json"
_strings = pa.list_(pa.string())
SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("liked_ids", _strings, nullable=False),
        pa.field("liked_titles", _strings, nullable=False),
        pa.field("disliked_ids", _strings, nullable=False),
        pa.field("disliked_titles", _strings, nullable=False),
    ]
)


class SampleError(UserError, ValueError):
    """Samples that cannot be read or drawn as asked."""


def write_samples(out_dir: str | Path, splits: dict[str, pa.Table], meta: dict[str, Any]) -> Path:
    """One Parquet file per split plus ``samples.json`` (``meta`` and the row counts)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, table in splits.items():
        pq.write_table(table.cast(SAMPLE_SCHEMA), out_dir / f"{split}.parquet")
    # Splits written earlier into the same directory (e.g. a second import) keep their counts.
    previous = json.loads((out_dir / META_FILE).read_text()) if (out_dir / META_FILE).is_file() else {}
    counts = {**previous.get("counts", {}), **{split: table.num_rows for split, table in splits.items()}}
    (out_dir / META_FILE).write_text(json.dumps({**meta, "counts": counts}, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_samples(samples_dir: str | Path, split: str) -> pa.Table:
    path = Path(samples_dir) / f"{split}.parquet"
    if not path.is_file():
        raise SampleError(f"no {split!r} samples at {path}")
    return pq.read_table(path).cast(SAMPLE_SCHEMA)


def few_shot(table: pa.Table, shots: int, seed: int) -> pa.Table:
    """``shots`` rows drawn without replacement with ``seed`` (same inputs, same rows, same order)."""
    if shots > table.num_rows:
        raise SampleError(f"asked for {shots} shots but only {table.num_rows} training samples exist")
    rng = np.random.default_rng(seed)
    return table.take(rng.choice(table.num_rows, size=shots, replace=False))
