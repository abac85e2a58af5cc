"""The retrieval stage of ``/v1/recommend``: a shortlist of catalogue items for the LLM to re-rank.

An LLM scores a candidate in milliseconds at best, so a recommendation never pushes the whole
catalogue through it (LlamaRec and LLaRA serve the same way): this index retrieves the
``rerank_candidates`` items most like the user's history and the model re-ranks only those.

Item vectors come from what every item has (:mod:`atflrec.item_vectors`): the text encoder's
title-and-tags vector and the audio encoder's pooled-FBank vector, each unit length and weighted
by ``text_weight`` / ``audio_weight``, plus a popularity prior (the standardised log of the item's
likes in the dataset's interactions; items without any, cold ones included, sit at the mean). The
query is the mean vector of the history's liked items minus that of its disliked ones; an item's
retrieval score is ``query . item + popularity_weight * popularity``, searched exactly by faiss's
inner-product index over ``[item, popularity]`` with the query ``[query, popularity_weight]``.

The index (encoders, vectors, ids) is built once per catalogue and model settings and saved as
safetensors + JSON (no pickle) in ``index_dir``; each replica loads it and adds the items the
catalogue gained since (cold-start uploads), so a new item can be recommended at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from atflrec.config import StrictModel
from atflrec.item_vectors import AudioEncoder, TextEncoder, item_text

TENSORS_FILE, META_FILE = "index.safetensors", "index.json"


class RetrievalConfig(StrictModel):
    """How ``/v1/recommend`` shortlists items before the LLM re-ranks them."""

    rerank_candidates: int = Field(50, ge=1, description="items the LLM re-ranks per request (retrieved first)")
    text_dims: int = Field(32, ge=1, description="dimensions of the title-and-tags vectors (TF-IDF + SVD)")
    audio_dims: int = Field(32, ge=1, description="dimensions of the pooled-FBank vectors (PCA)")
    text_weight: float = Field(1.0, ge=0, description="weight of the text vector in the item vector")
    audio_weight: float = Field(1.0, ge=0, description="weight of the audio vector in the item vector")
    popularity_weight: float = Field(0.2, ge=0, description="weight of the standardised log-likes prior")
    n_mels: int | None = Field(
        None, ge=1, description="Mel-bin count of the audio vectors; unset: the store's smallest")


class ItemIndex:
    """Item vectors with their encoders; ``retrieve`` shortlists, ``add`` takes a new item at once."""

    def __init__(self, config: RetrievalConfig, text: TextEncoder, audio: AudioEncoder | None, ids: list[str],
                 vectors: np.ndarray, popularity: np.ndarray, fingerprint: str) -> None:
        import faiss

        self.config, self.text, self.audio, self.fingerprint = config, text, audio, fingerprint
        self.n_mels: int | None = None  # the Mel-bin count of the audio vectors, set by catalogue_index
        self.ids = list(ids)
        self.position = {item: n for n, item in enumerate(self.ids)}
        self.vectors = np.asarray(vectors, np.float32)
        self.popularity = np.asarray(popularity, np.float32)
        self.search = faiss.IndexFlatIP(self.vectors.shape[1] + 1)
        if self.ids:
            self.search.add(np.column_stack([self.vectors, self.popularity]))
        self.hidden: set[str] = set()  # deleted from the catalogue: never retrieved until added again
        self.synced_revision: int | None = None  # the catalogue revision :func:`sync` last brought it to

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def build(cls, config: RetrievalConfig, items: Mapping[str, tuple[str, Sequence[str]]],
              features: Mapping[str, np.ndarray], likes: Mapping[str, int], fingerprint: str = "",
              seed: int = 0) -> ItemIndex:
        """Fit the encoders on ``items`` (id -> (title, tags)) and their ``features`` (id -> FBank
        frames; items without audio may be missing) and index every item; ``likes``: likes per item."""
        ids = list(items)
        texts = [item_text(*items[i]) for i in ids]
        text = TextEncoder.fit(texts, config.text_dims, seed)
        audio = AudioEncoder.fit({i: features[i] for i in ids if i in features}, config.audio_dims, seed)
        counts = np.log1p(np.array([likes.get(i, 0) for i in ids], dtype=np.float64))
        spread = counts.std()
        popularity = (counts - counts.mean()) / spread if spread > 0 else np.zeros(len(ids))
        index = cls(config, text, audio, [], np.zeros((0, index_dims(text, audio)), np.float32),
                    np.zeros(0, np.float32), fingerprint)
        index._extend(ids, texts, [features.get(i) for i in ids], popularity)
        return index

    def _vectors(self, texts: Sequence[str], frames: Sequence[np.ndarray | None]) -> np.ndarray:
        parts = [self.config.text_weight * self.text(texts)]
        if self.audio is not None:
            parts.append(self.config.audio_weight * self.audio(frames))
        return np.hstack(parts).astype(np.float32)

    def _extend(self, ids: list[str], texts: Sequence[str], frames: Sequence[np.ndarray | None],
                popularity: np.ndarray) -> None:
        vectors = self._vectors(texts, frames)
        popularity = np.asarray(popularity, np.float32)
        self.position.update({item: len(self.ids) + n for n, item in enumerate(ids)})
        self.ids += ids
        self.vectors = np.vstack([self.vectors, vectors])
        self.popularity = np.concatenate([self.popularity, popularity])
        self.search.add(np.column_stack([vectors, popularity]))

    def add(self, item_id: str, title: str, tags: Sequence[str], frames: np.ndarray | None) -> None:
        """Index a new item (a cold-start upload: no likes yet, so the mean popularity); an id deleted
        earlier and uploaded again gets its new content."""
        if item_id not in self.position:
            self._extend([item_id], [item_text(title, tags)], [frames], np.zeros(1))
            return
        row = self.position[item_id]
        self.vectors[row] = self._vectors([item_text(title, tags)], [frames])[0]
        self.hidden.discard(item_id)
        self.search.reset()  # a flat index cannot update one row: add them all again (cheap)
        self.search.add(np.column_stack([self.vectors, self.popularity]))

    def hide(self, item_id: str) -> None:
        """Leave an item out of every retrieval (it was deleted from the catalogue)."""
        if item_id in self.position:
            self.hidden.add(item_id)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.position and item_id not in self.hidden

    def __len__(self) -> int:
        return len(self.ids)

    # --- querying --------------------------------------------------------------------------------

    def query_vector(self, liked: Sequence[str], disliked: Sequence[str]) -> np.ndarray:
        """Mean liked minus mean disliked item vector (ids the index lacks are left out)."""
        query = np.zeros(self.vectors.shape[1], np.float32)
        for ids, sign in ((liked, 1.0), (disliked, -1.0)):
            rows = [self.position[i] for i in ids if i in self.position]
            if rows:
                query += sign * self.vectors[rows].mean(axis=0)
        return query

    def retrieve(self, liked: Sequence[str], disliked: Sequence[str], n: int,
                 exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
        """The ``n`` best items by retrieval score (best first), leaving out ``exclude``."""
        skip = set(exclude) | self.hidden
        wanted = min(n + len(skip), len(self.ids))
        if wanted <= 0:
            return []
        probe = np.append(self.query_vector(liked, disliked), self.config.popularity_weight).astype(np.float32)
        scores, rows = self.search.search(probe[None, :], wanted)
        found = [(self.ids[r], float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0 and self.ids[r] not in skip]
        return found[:n]

    # --- persistence -----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory`` atomically (a new sibling directory renamed into place)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        staging = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.tmp")
        staging.mkdir(parents=True)
        try:
            tensors = {"vectors": self.vectors, "popularity": self.popularity, "text.idf": self.text.idf,
                       "text.components": self.text.components}
            if self.audio is not None:
                tensors.update({f"audio.{k}": getattr(self.audio, k)
                                for k in ("mean", "scale", "centre", "components")})
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(staging / TENSORS_FILE))
            meta = {"fingerprint": self.fingerprint, "config": self.config.model_dump(mode="json"), "ids": self.ids,
                    "vocabulary": self.text.vocabulary}
            (staging / META_FILE).write_text(json.dumps(meta))
            for path in staging.iterdir():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            old = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.old")
            if directory.exists():
                if not is_index_dir(directory):
                    raise FileExistsError(f"{directory} exists and is not a retrieval index; not replacing it")
                os.replace(directory, old)  # a directory cannot be renamed over a non-empty one
            os.replace(staging, directory)
            if old.exists():
                shutil.rmtree(old)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        from safetensors.numpy import load_file

        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        tensors = load_file(str(directory / TENSORS_FILE))
        text = TextEncoder(meta["vocabulary"], tensors["text.idf"], tensors["text.components"])
        audio = None
        if "audio.components" in tensors:
            audio = AudioEncoder(*(tensors[f"audio.{k}"] for k in ("mean", "scale", "centre", "components")))
        return cls(RetrievalConfig.model_validate(meta["config"]), text, audio, meta["ids"], tensors["vectors"],
                   tensors["popularity"], meta["fingerprint"])


def is_index_dir(directory: Path) -> bool:
    """True for a directory holding exactly what :meth:`ItemIndex.save` writes."""
    return directory.is_dir() and {p.name for p in directory.iterdir()} == {TENSORS_FILE, META_FILE}


def index_dims(text: TextEncoder, audio: AudioEncoder | None) -> int:
    return text.dims + (audio.dims if audio is not None else 0)


def catalogue_fingerprint(config: RetrievalConfig, parts: Sequence[Any]) -> str:
    """What an index was built from: the retrieval settings and the catalogue's identity."""
    text = json.dumps({"config": config.model_dump(mode="json"), "parts": list(parts)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_or_build(directory: str | Path, fingerprint: str, build: Callable[[], ItemIndex]) -> ItemIndex:
    """The saved index in ``directory`` when it was built from the same catalogue and settings;
    otherwise ``build()``, saved there for the next replica."""
    directory = Path(directory)
    if (directory / META_FILE).is_file():
        try:
            index = ItemIndex.load(directory)
            if index.fingerprint == fingerprint:
                return index
        except (OSError, ValueError, KeyError):
            pass  # unreadable or from an older layout: rebuilt below
    index = build()
    index.save(directory)
    return index


def catalogue_index(config: RetrievalConfig, catalogue: Any, dataset: str, store: str,
                    directory: str | Path) -> ItemIndex:
    """The index of a serving :class:`~atflrec.serving.catalogue.Catalogue`: loaded from ``directory``
    when built from the same dataset, store and settings, else built from the dataset's items (likes
    counted in its interactions) and saved; then every item the catalogue gained since is added."""
    from atflrec.data.format import ITEMS_FILE, read_interactions
    from atflrec.features.store import read_manifest

    n_mels = config.n_mels if config.n_mels in catalogue.mel_counts else catalogue.mel_counts[0]
    items_file = Path(dataset) / ITEMS_FILE
    stat = items_file.stat()
    manifest = read_manifest(store) or {}
    fingerprint = catalogue_fingerprint(config, [str(items_file), stat.st_size, stat.st_mtime_ns,
                                                 manifest.get("index"), n_mels])

    def build() -> ItemIndex:
        interactions = read_interactions(dataset)
        likes: dict[str, int] = {}
        for item, label in zip(interactions.column("item_id").to_pylist(), interactions.column("label").to_pylist()):
            likes[item] = likes.get(item, 0) + int(label == 1)
        cold = set(catalogue.cold_ids)
        items = {i: (t, catalogue.tags.get(i, [])) for i, t in catalogue.titles.items() if i not in cold}
        features = catalogue.features(n_mels)
        return ItemIndex.build(config, items, {i: features[i] for i in items if i in features}, likes, fingerprint)

    index = load_or_build(directory, fingerprint, build)
    index.n_mels = n_mels
    sync(index, catalogue)
    return index


def sync(index: ItemIndex, catalogue: Any) -> int:
    """Add the catalogue's items the index lacks (cold-start uploads) and hide those the catalogue
    no longer has (deleted uploads); returns how many items were added. A no-op (no walk over the
    index) while the catalogue's ``revision`` is the one last synced."""
    if index.synced_revision == catalogue.revision:
        return 0
    for item in [i for i in index.ids if i not in catalogue.titles]:
        index.hide(item)
    missing = [i for i in catalogue.titles if i not in index]
    features = catalogue.features(index.n_mels if index.n_mels is not None else catalogue.mel_counts[0])
    for item in missing:
        index.add(item, catalogue.titles[item], catalogue.tags.get(item, []), features.get(item))
    index.synced_revision = catalogue.revision
    return len(missing)
