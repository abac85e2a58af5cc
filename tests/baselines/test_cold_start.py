"""How each non-LLM baseline scores items it never saw in training (as its ``cold_start`` says)."""

from __future__ import annotations

import numpy as np
import pytest
from planted import N_MELS, item_level, make_row

from atflrec.baselines import RECOMMENDERS, Context, Item, build_recommender


@pytest.fixture
def fitted(rng):
    """Train on the item-level data; the catalogue also holds 3 items no training row names."""
    train, _, catalogue, _ = item_level(rng, items=60, users=30)
    cold = ["c1", "c2", "c3"]
    catalogue = {**catalogue, **{c: Item(f"new song {c}", (tag,)) for c, tag in zip(cold, ("rock", "jazz", "pop"))}}
    features = {i: rng.normal(size=(10, N_MELS)).astype(np.float16) for i in catalogue}

    def fit(kind: str, settings: dict | None = None):
        model = build_recommender(kind, settings or {})
        model.fit(train, Context(catalogue, lambda n: features, seed=0))
        return model

    return fit, train, cold


def _rows(user: str, targets: list[str], liked: list[str], disliked: list[str]) -> list[dict]:
    return [make_row(user, n, t, 0, liked, disliked) for n, t in enumerate(targets)]


@pytest.mark.parametrize("kind", ["popularity", "lightgcn"])
def test_every_cold_item_ties_for_every_user(fitted, kind) -> None:
    fit, train, cold = fitted
    model = fit(kind)
    users = sorted({r["user_id"] for r in train})[:3] + ["never-seen"]
    scores = np.concatenate([model.score(_rows(u, cold, [], [])) for u in users])
    assert np.all(np.isfinite(scores)) and np.ptp(scores) < 1e-6


def test_mf_scores_cold_items_by_the_user_bias_alone(fitted) -> None:
    fit, train, cold = fitted
    model = fit("mf")
    known = [r["user_id"] for r in train[:5]]
    per_user = [model.score(_rows(u, cold, [], [])) for u in known]
    assert all(np.ptp(s) < 1e-6 for s in per_user)  # ties within a user
    assert np.ptp([s[0] for s in per_user]) > 1e-4  # but users differ (their biases)
    assert np.ptp(model.score(_rows("never-seen", [train[0]["item_id"], *cold], [], []))) > 1e-4  # warm item != cold


def test_sasrec_scores_a_cold_target_from_the_history(fitted) -> None:
    fit, train, cold = fitted
    model = fit("sasrec", {"epochs": 30})
    histories = [(r["liked_ids"], r["disliked_ids"]) for r in train[:4]]
    scores = [model.score(_rows("new", cold, liked, disliked)) for liked, disliked in histories]
    assert all(np.ptp(s) < 1e-6 for s in scores)  # one history: every cold target the same
    assert np.ptp([s[0] for s in scores]) > 1e-4  # other histories, other scores


def test_content_tells_cold_items_apart(fitted) -> None:
    fit, train, cold = fitted
    scores = fit("content", {"n_mels": N_MELS}).score(
        _rows("new", cold, train[0]["liked_ids"], train[0]["disliked_ids"]))
    assert len(set(np.round(scores, 8))) == len(cold)


def test_every_kind_documents_its_cold_start() -> None:
    assert all(RECOMMENDERS[kind].cold_start for kind in RECOMMENDERS)
