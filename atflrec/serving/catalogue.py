"""The items a served model can score: the dataset's items plus cold-start items added at runtime.

Titles come from the dataset's ``items.parquet``, audio features from its feature store (the same
float16 arrays training read). A cold-start item is featurised from its uploaded audio with the
feature store's own single-clip code (:func:`atflrec.features.clip.featurise_file`, at the store's
clip length) and written as one Parquet file to ``items_dir``; every replica picks up the files it
has not seen yet before each request, so an item added through one replica is scorable on all of
them and survives replica restarts. Adding an id that exists is refused; a cold item can be
deleted (its file removed; every replica forgets it on its next look).

Robustness: a file in ``items_dir`` that cannot be read or used (corrupt, unreadable, another
item's id, a dataset id, or without features for a Mel-bin count a served model needs) is skipped
and reported (:attr:`Catalogue.bad_items`, shown by ``/healthz``), never fatal. Uploads are
featurised at every Mel-bin count of the feature store (not only the served models'), so a later
model with another count still has their audio; files are written to a temporary name, fsynced and
hard-linked into place (:mod:`atflrec.io`).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atflrec.errors import UserError
from atflrec.features.audio import MAX_AUDIO_SECONDS
from atflrec.features.clip import featurise_file
from atflrec.io import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)

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


class NotColdItem(UserError, KeyError):
    """A delete of an id that is not a cold-start item (unknown, or one of the dataset's items)."""


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Catalogue:
    """Item titles (in catalogue order), tags and audio features per Mel-bin count."""

    def __init__(self, titles: dict[str, str], features: dict[int, dict[str, np.ndarray]], clip_seconds: float,
                 items_dir: str | Path, store_mels: Iterable[int] = (),
                 tags: dict[str, list[str]] | None = None) -> None:
        self.titles = titles
        self.tags = tags if tags is not None else {}
        self._features = features
        self.clip_seconds = clip_seconds
        self.items_dir = Path(items_dir)
        self.store_mels = sorted(set(store_mels) | set(features))  # counts every upload is featurised at
        self._cold: dict[str, tuple[int, int, int] | None] = {}  # item id -> its file's stat when loaded
        self.bad_items: dict[str, str] = {}  # file name -> why it was skipped
        self._bad_keys: dict[str, tuple[int, int, int] | None] = {}
        self._dir_stamp: int | None = None
        self.revision = 0  # counts changes to the item set, so a derived index syncs only after one

    @classmethod
    def load(cls, dataset: str, store: str, n_mels: Iterable[int], items_dir: str) -> Catalogue:
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
        catalogue = cls(titles, features, manifest["params"]["clip_seconds"], items_dir, manifest["params"]["n_mels"],
                        tags)
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
        clip = featurise_file(audio, suffix, self.store_mels or sorted(self._features), self.clip_seconds, max_seconds)
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
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = self.items_dir / f"{item_id}.parquet"
        try:
            # exclusive: two replicas cannot both add one id
            atomic_write_bytes(path, buffer.getvalue(), exclusive=True)
        except FileExistsError:
            raise ItemExists(f"item {item_id!r} is already in the catalogue") from None
        self._load(path)

    def delete(self, item_id: str) -> None:
        """Remove a cold-start item (its file, and from this replica; others forget it on refresh)."""
        self.refresh()
        if item_id not in self._cold:
            what = ("a dataset item; only cold-start items can be deleted" if item_id in self
                    else "no such cold-start item")
            raise NotColdItem(f"item {item_id!r}: {what}")
        try:
            (self.items_dir / f"{item_id}.parquet").unlink()
        except FileNotFoundError:
            pass  # another replica deleted it first
        fsync_dir(self.items_dir)
        self._forget(item_id)

    def refresh(self) -> None:
        """Load cold-start items other replicas (or earlier runs) wrote since the last look, forget the
        deleted ones; a file that cannot be used is skipped and reported in :attr:`bad_items`."""
        try:
            stamp = os.stat(self.items_dir).st_mtime_ns
        except FileNotFoundError:
            return
        except OSError as exc:
            self.bad_items[str(self.items_dir)] = f"cannot read the items directory: {exc}"
            return
        if stamp == self._dir_stamp:
            return
        try:
            paths = {p.stem: p for p in self.items_dir.glob("*.parquet") if not p.name.startswith(".")}
        except OSError as exc:
            self.bad_items[str(self.items_dir)] = f"cannot list the items directory: {exc}"
            return
        self.bad_items.pop(str(self.items_dir), None)
        for item_id in [i for i in self._cold if i not in paths]:
            self._forget(item_id)
        for name in [n for n in self.bad_items if n != str(self.items_dir) and Path(n).stem not in paths]:
            self.bad_items.pop(name)
            self._bad_keys.pop(name, None)
        for stem, path in sorted(paths.items()):
            key = _stat_key(path)
            if stem in self._cold:
                if self._cold[stem] == key:
                    continue
                self._forget(stem)  # deleted and added again since the last look
            elif path.name in self._bad_keys and self._bad_keys[path.name] == key:
                continue  # known bad, unchanged
            self._load(path, key)
        self._dir_stamp = stamp  # a file added after the stat changes the stamp again

    def _forget(self, item_id: str) -> None:
        if item_id in self.titles:
            self.revision += 1
        self._cold.pop(item_id, None)
        self.titles.pop(item_id, None)
        self.tags.pop(item_id, None)
        for features in self._features.values():
            features.pop(item_id, None)

    def _load(self, path: Path, key: tuple[int, int, int] | None = None) -> None:
        key = key if key is not None else _stat_key(path)
        try:
            table = pq.read_table(path, schema=COLD_SCHEMA)
            rows = table.to_pylist()
            ids = {row["item_id"] for row in rows}
            if ids != {path.stem}:
                raise ValueError(f"holds items {sorted(ids)[:3]}, not {path.stem!r}")
            if path.stem in self.titles:
                raise ValueError(f"{path.stem!r} is a dataset item")
            arrays = {}
            for row in rows:
                if row["n_mels"] in self._features:
                    arrays[row["n_mels"]] = np.frombuffer(row["features"], np.float16).reshape(
                        row["n_frames"], row["n_mels"])
            missing = sorted(set(self._features) - set(arrays))
            if missing:
                raise ValueError(
                    f"no {missing}-bin features (uploaded when those were not kept); delete and re-upload it")
        except Exception as exc:  # noqa: BLE001 - any unusable file is skipped, never fatal
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            if self.bad_items.get(path.name) != reason:
                log.warning("skipping cold item file %s: %s", path, reason)
            self.bad_items[path.name] = reason
            self._bad_keys[path.name] = key
            return
        self.bad_items.pop(path.name, None)
        self._bad_keys.pop(path.name, None)
        for n_mels, array in arrays.items():
            self._features[n_mels][path.stem] = array
        self.titles[path.stem] = rows[0]["title"]
        self.tags[path.stem] = list(rows[0]["tags"])
        self._cold[path.stem] = key
        self.revision += 1
