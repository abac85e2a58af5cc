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

The splits are written in the sample format (:mod:`atflrec.samples.format`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from atflrec.config import StrictModel
from atflrec.data.format import Dataset
from atflrec.samples.format import SAMPLE_SCHEMA, SPLITS, write_samples


class SampleConfig(StrictModel):
    """How samples and splits are cut from interactions."""

    history_len: int = Field(10, ge=0, description="at most this many earlier interactions form the history")
    min_history: int = Field(1, ge=0, description="interactions with a shorter history yield no sample")
    val_per_user: int = Field(1, ge=0, description="warm validation samples per user (before the test ones)")
    test_per_user: int = Field(2, ge=0, description="warm test samples per user (each user's latest)")
    cold_item_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of items held out as cold-start")
    seed: int = Field(0, description="seed for choosing the cold-start items")


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


def make_samples(dataset: Dataset, out_dir: str | Path, config: SampleConfig) -> dict[str, int]:
    """Build, write and return the row count of each split (the ``atflrec samples`` verb)."""
    splits = build_samples(dataset, config)
    write_samples(out_dir, splits, {"source": str(dataset.root), "config": config.model_dump(mode="json")})
    return {split: table.num_rows for split, table in splits.items()}
