"""Instruction samples in the TALLRec setting, built from a dataset's interactions.

For each user, in time order (ties keep file order), every interaction is a sample whose target is
that item, whose label is the interaction's label, and whose history is up to ``history_len``
earlier interactions, split into liked and disliked items.

Splits:
- ``cold``: a seeded ``cold_item_fraction`` of the interacted items is held out. Interactions with
  a cold item become ``cold`` samples only; cold items never appear in ``train``/``val``/``test``,
  neither as target nor in any history (histories of every sample, cold ones included, are
  built from warm interactions only). So a cold target was never seen in training, in any role.
- ``train``/``val``/``test`` (warm, by time): per user, the last ``test_per_user`` warm
  interactions are ``test``, the ``val_per_user`` before them ``val``, the rest ``train``.

Samples are stored one Parquet file per split (:data:`SAMPLE_SCHEMA`) with ``samples.json``
holding the config and counts. Few-shot training sets are drawn from ``train`` with a seed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from atflrec.config import StrictModel
from atflrec.data.format import Dataset
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


class SampleConfig(StrictModel):
    """How samples and splits are cut from interactions."""

    history_len: int = Field(10, ge=0, description="at most this many earlier interactions form the history")
    min_history: int = Field(1, ge=0, description="interactions with a shorter history yield no sample")
    val_per_user: int = Field(1, ge=0, description="warm validation samples per user (before the test ones)")
    test_per_user: int = Field(2, ge=0, description="warm test samples per user (each user's latest)")
    cold_item_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of items held out as cold-start")
    seed: int = Field(0, description="seed for choosing the cold-start items")


class SampleError(UserError, ValueError):
    """Samples that cannot be read or drawn as asked."""


def _sample(user: str, pos: int, target: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    liked = [h for h in history if h["label"] == 1]
    disliked = [h for h in history if h["label"] != 1]
    return {
        "sample_id": f"{user}#{pos}",
        "user_id": user,
        "item_id": target["item_id"],
        "title": target["title"],
        "label": target["label"],
        "timestamp": target["timestamp"],
        "liked_ids": [h["item_id"] for h in liked],
        "liked_titles": [h["title"] for h in liked],
        "disliked_ids": [h["item_id"] for h in disliked],
        "disliked_titles": [h["title"] for h in disliked],
    }


def choose_cold_items(item_ids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded subset of ``item_ids`` (order-independent: ids are sorted first)."""
    ids = sorted(set(item_ids))
    count = int(round(fraction * len(ids)))
    rng = np.random.default_rng(seed)
    return {ids[i] for i in rng.choice(len(ids), size=count, replace=False)}


def build_samples(dataset: Dataset, config: SampleConfig) -> dict[str, pa.Table]:
    """All four splits as tables of :data:`SAMPLE_SCHEMA`."""
    titles = dict(zip(dataset.items.column("item_id").to_pylist(), dataset.items.column("title").to_pylist()))
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in dataset.interactions.to_pylist():
        row["title"] = titles[row["item_id"]]
        by_user[row["user_id"]].append(row)
    cold_items = choose_cold_items(dataset.interactions.column("item_id").to_pylist(),
                                   config.cold_item_fraction, config.seed)

    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for user in sorted(by_user):
        sequence = sorted(by_user[user], key=lambda r: r["timestamp"])  # stable: ties keep file order
        warm_before: list[dict[str, Any]] = []  # warm interactions seen so far
        n_warm = sum(r["item_id"] not in cold_items for r in sequence)
        for pos, row in enumerate(sequence):
            history = warm_before[-config.history_len:] if config.history_len else []
            if row["item_id"] in cold_items:
                split = "cold"
            else:
                from_end = n_warm - len(warm_before)  # 1 for the user's latest warm interaction
                split = ("test" if from_end <= config.test_per_user
                         else "val" if from_end <= config.test_per_user + config.val_per_user
                         else "train")
                warm_before.append(row)
            if len(history) >= config.min_history:
                rows[split].append(_sample(user, pos, row, history))
    return {split: pa.Table.from_pylist(rows[split], schema=SAMPLE_SCHEMA) for split in SPLITS}


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


def make_samples(dataset: Dataset, out_dir: str | Path, config: SampleConfig) -> dict[str, int]:
    """Build, write and return the row count of each split (the ``atflrec samples`` verb)."""
    splits = build_samples(dataset, config)
    write_samples(out_dir, splits, {"source": str(dataset.root), "config": config.model_dump(mode="json")})
    return {split: table.num_rows for split, table in splits.items()}
