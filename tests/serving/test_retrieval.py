"""The retrieval index: it shortlists what the history points at, takes new items at once, and
survives a save and load unchanged (no Ray, no model: the index is plain vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atflrec.serving.catalogue import Catalogue
from atflrec.serving.retrieval import ItemIndex, RetrievalConfig, load_or_build, sync

N_MELS = 8


def planted(rng: np.random.Generator, n: int = 120):
    """Half the items are rock (tag and a loud low band), half jazz (tag and a quiet one)."""
    items, features = {}, {}
    for k in range(n):
        rock = k % 2 == 0
        items[f"i{k}"] = (f"song {k}", ["rock" if rock else "jazz", "live" if k % 3 else "demo"])
        frames = rng.normal(size=(20, N_MELS))
        frames[:, :2] += 3.0 if rock else -3.0
        features[f"i{k}"] = frames.astype(np.float16)
    return items, features


@pytest.fixture
def index() -> ItemIndex:
    items, features = planted(np.random.default_rng(0))
    likes = {f"i{k}": k % 7 for k in range(120)}
    return ItemIndex.build(RetrievalConfig(text_dims=8, audio_dims=4), items, features, likes, fingerprint="f")


def test_the_shortlist_follows_the_history_and_leaves_it_out(index) -> None:
    liked, disliked = ["i0", "i2", "i4"], ["i1", "i3"]  # likes rock, dislikes jazz
    found = index.retrieve(liked, disliked, n=20, exclude=liked + disliked)
    ids = [i for i, _ in found]
    assert len(ids) == 20 and not set(ids) & set(liked + disliked)
    assert all(int(i[1:]) % 2 == 0 for i in ids)  # every one rock
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True)
    flipped = [i for i, _ in index.retrieve(disliked, liked, n=20, exclude=liked + disliked)]
    assert all(int(i[1:]) % 2 == 1 for i in flipped)


def test_scores_are_the_query_dot_item_plus_the_popularity_prior(index) -> None:
    liked, disliked = ["i0", "i5"], ["i7"]
    query = index.query_vector(liked, disliked)
    expected = index.vectors @ query + index.config.popularity_weight * index.popularity
    top = np.argsort(-expected)[:10]
    found = index.retrieve(liked, disliked, n=10)
    assert [i for i, _ in found] == [index.ids[r] for r in top]
    np.testing.assert_allclose([s for _, s in found], expected[top], rtol=1e-5, atol=1e-5)


def test_a_new_item_is_retrievable_at_once_and_encoded_like_a_built_one(index) -> None:
    items, features = planted(np.random.default_rng(0))
    index.add("new-rock", *items["i0"], features["i0"])
    assert "new-rock" in index and len(index) == 121
    np.testing.assert_allclose(index.vectors[index.position["new-rock"]], index.vectors[0], atol=1e-5)
    ranked = [i for i, _ in index.retrieve(["i0", "i2"], ["i1"], n=len(index), exclude=["i0", "i2", "i1"])]
    assert ranked.index("new-rock") < 59  # among the rock half, at once
    index.add("no-audio", "plain song", [], None)  # an item without audio gets the catalogue mean for audio
    assert np.isfinite(index.vectors[-1]).all()


def test_save_and_load_give_the_same_index_and_never_replace_a_foreign_directory(index, tmp_path: Path) -> None:
    saved = index.save(tmp_path / "index")
    again = ItemIndex.load(saved)
    assert again.ids == index.ids and again.fingerprint == "f"
    np.testing.assert_array_equal(again.vectors, index.vectors)
    history = (["i0", "i9"], ["i4"])
    assert again.retrieve(*history, n=15) == index.retrieve(*history, n=15)
    index.save(saved)  # replacing its own index is fine
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        index.save(foreign)
    assert (foreign / "mine.txt").read_text() == "keep"


def test_load_or_build_reuses_a_matching_index_and_rebuilds_a_stale_one(index, tmp_path: Path) -> None:
    built = []

    def build() -> ItemIndex:
        built.append(1)
        return index

    load_or_build(tmp_path / "ix", "f", build)
    load_or_build(tmp_path / "ix", "f", build)
    assert len(built) == 1
    index.fingerprint = "g"
    load_or_build(tmp_path / "ix", "g", build)
    assert len(built) == 2 and ItemIndex.load(tmp_path / "ix").fingerprint == "g"


def test_a_hidden_item_is_never_retrieved_until_added_again(index) -> None:
    items, features = planted(np.random.default_rng(0))
    everything = [i for i, _ in index.retrieve(["i0"], [], n=len(index))]
    assert "i2" in everything
    index.hide("i2")
    assert "i2" not in index and "i2" not in [i for i, _ in index.retrieve(["i0"], [], n=len(index))]
    index.add("i2", *items["i1"], features["i1"])  # uploaded again, now with jazz content
    assert "i2" in index
    np.testing.assert_allclose(index.vectors[index.position["i2"]], index.vectors[index.position["i1"]], atol=1e-5)
    rock = [i for i, _ in index.retrieve(["i0", "i4"], ["i1", "i3"], n=30, exclude=["i0", "i4", "i1", "i3"])]
    assert "i2" not in rock  # it is jazz now


def test_sync_follows_the_catalogue_uploads_and_deletes_and_skips_an_unchanged_one(index, tmp_path: Path) -> None:
    items, features = planted(np.random.default_rng(0))
    titles = {i: title for i, (title, _) in items.items()}
    tags = {i: list(t) for i, (_, t) in items.items()}
    catalogue = Catalogue(titles, {N_MELS: dict(features)}, 1.0, tmp_path / "items", [N_MELS], tags)
    (tmp_path / "items").mkdir()
    index.n_mels = N_MELS
    assert sync(index, catalogue) == 0 and index.synced_revision == catalogue.revision
    catalogue.add("new", "song new", ["rock"], {N_MELS: features["i0"]})
    assert sync(index, catalogue) == 1 and "new" in index
    assert "new" in [i for i, _ in index.retrieve(["i0"], [], n=len(index))]
    catalogue.delete("new")
    assert sync(index, catalogue) == 0 and "new" not in index
    # Unchanged since the last sync: nothing is walked (a stray hide stays until the catalogue moves).
    index.hide("i2")
    assert sync(index, catalogue) == 0 and "i2" not in index
    catalogue.add("other", "song other", ["jazz"], {N_MELS: features["i1"]})
    assert sync(index, catalogue) == 2 and "i2" in index and "other" in index
