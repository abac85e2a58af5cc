"""The items a served model can score: the dataset's items plus cold-start items added at runtime.

Titles come from the dataset's ``items.parquet``, audio features from its feature store (the same
float16 arrays training read). A cold-start item is featurised from its uploaded audio with the
feature store's own single-clip code (:func:`atflrec.features.clip.featurise_file`, at the store's
clip length) and written as one Parquet file to ``items_dir``; every replica picks up the files it
has not seen yet before each request, so an item added through one replica is scorable on all of
them and survives replica restarts. Adding an id that exists is refused.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atflrec.errors import UserError
from atflrec.features.audio import MAX_AUDIO_SECONDS
from atflrec.features.clip import featurise_file

COLD_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),
        pa.field("n_mels", pa.int32(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("features", pa.binary(), nullable=False),  # float16 [n_frames, n_mels], row-major
    ]
)


class ItemExists(UserError, ValueError):
    """A cold-start item whose id the catalogue already has."""


class Catalogue:
    """Item titles (in catalogue order), tags and audio features per Mel-bin count."""

    def __init__(self, titles: dict[str, str], features: dict[int, dict[str, np.ndarray]], clip_seconds: float,
                 items_dir: str | Path, tags: dict[str, list[str]] | None = None) -> None:
        self.titles = titles
        self.tags = tags if tags is not None else {}
        self._features = features
        self.clip_seconds = clip_seconds
        self.items_dir = Path(items_dir)
        self._cold: set[str] = set()
        self._dir_stamp: int | None = None

    @classmethod
    def load(cls, dataset: str, store: str, n_mels: Iterable[int], items_dir: str) -> "Catalogue":
        """The dataset's items, the store's features for ``n_mels`` and the cold items in ``items_dir``.

        Without any Mel-bin count (text-only models) uploads are still featurised, at the store's
        smallest count, so their audio is checked and kept."""
        from atflrec.data.format import read_items
        from atflrec.features.store import StoreError, load_features, read_manifest

        items = read_items(dataset)
        manifest = read_manifest(store)
        if manifest is None:
            raise StoreError(f"no feature store at {store!r} (run `atflrec features` first)")
        counts = sorted(set(n_mels)) or [min(manifest["params"]["n_mels"])]
        features = {n: load_features(store, n) for n in counts}
        ids = items.column("item_id").to_pylist()
        titles = dict(zip(ids, items.column("title").to_pylist()))
        tags = dict(zip(ids, items.column("tags").to_pylist()))
        catalogue = cls(titles, features, manifest["params"]["clip_seconds"], items_dir, tags)
        catalogue.refresh()
        return catalogue

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.titles

    def __len__(self) -> int:
        return len(self.titles)

    @property
    def cold_items(self) -> int:
        return len(self._cold)

    @property
    def cold_ids(self) -> list[str]:
        """Ids of the cold-start items (uploads), sorted."""
        return sorted(self._cold)

    @property
    def mel_counts(self) -> list[int]:
        """The Mel-bin counts whose features this catalogue holds."""
        return sorted(self._features)

    def features(self, n_mels: int) -> dict[str, np.ndarray]:
        """Features by item id (a live view: cold items appear in it when added)."""
        return self._features[n_mels]

    def featurise(self, audio: bytes, suffix: str, max_seconds: float = MAX_AUDIO_SECONDS) -> dict[int, np.ndarray]:
        """An upload's features for every kept Mel-bin count, stored like the feature store's.

        Raises :class:`~atflrec.features.audio.BadAudio` for audio that cannot be used (the feature
        store's bounds: sample-rate range, at most ``max_seconds`` declared, crop before resampling)."""
        clip = featurise_file(audio, suffix, sorted(self._features), self.clip_seconds, max_seconds)
        return {n: f[: clip.n_frames].astype(np.float16) for n, f in clip.features.items()}

    def add(self, item_id: str, title: str, tags: Sequence[str], features: dict[int, np.ndarray]) -> None:
        """Write a cold-start item to ``items_dir`` (exclusively: two replicas cannot both add one id)."""
        if item_id in self:
            raise ItemExists(f"item {item_id!r} is already in the catalogue")
        table = pa.table(
            {
                "item_id": [item_id] * len(features), "title": [title] * len(features),
                "tags": [list(tags)] * len(features), "n_mels": list(features),
                "n_frames": [f.shape[0] for f in features.values()],
                "features": [np.ascontiguousarray(f, dtype=np.float16).tobytes() for f in features.values()],
            },
            schema=COLD_SCHEMA,
        )
        self.items_dir.mkdir(parents=True, exist_ok=True)
        path = self.items_dir / f"{item_id}.parquet"
        staging = self.items_dir / f".{item_id}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, staging)
        try:
            os.link(staging, path)  # atomic and exclusive: fails when the file exists
        except FileExistsError:
            raise ItemExists(f"item {item_id!r} is already in the catalogue") from None
        finally:
            staging.unlink()
        self._load(path)

    def refresh(self) -> None:
        """Load cold-start items other replicas (or earlier runs) wrote since the last look."""
        try:
            stamp = os.stat(self.items_dir).st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._dir_stamp:
            return
        for path in sorted(self.items_dir.glob("*.parquet")):
            if path.stem not in self._cold:
                self._load(path)
        self._dir_stamp = stamp  # a file added after the stat changes the stamp again

    def _load(self, path: Path) -> None:
        table = pq.read_table(path, schema=COLD_SCHEMA)
        for row in table.to_pylist():
            if row["n_mels"] in self._features:
                array = np.frombuffer(row["features"], np.float16).reshape(row["n_frames"], row["n_mels"])
                self._features[row["n_mels"]][row["item_id"]] = array
            self.titles[row["item_id"]] = row["title"]
            self.tags[row["item_id"]] = list(row["tags"])
        self._cold.add(path.stem)
