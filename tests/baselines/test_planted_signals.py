"""Every non-LLM baseline learns its family's planted signal and sits near chance without it."""

from __future__ import annotations

import numpy as np
import pytest
from planted import N_MELS, communities, content_signal, item_level, shuffled, taste_in_history, user_propensity

from atflrec.baselines import Context, build_recommender
from atflrec.metrics import auc

# (kind, settings, data generator): each family on the signal it is built to find.
CASES = [
    ("popularity", {}, item_level),
    ("mf", {}, item_level),
    ("mf", {}, communities),
    ("lightgcn", {}, communities),
    ("sasrec", {}, taste_in_history),
    ("content", {"audio": False}, lambda rng: content_signal(rng, "text")),
    ("content", {"text": False, "n_mels": 8}, lambda rng: content_signal(rng, "audio")),
    ("content", {"n_mels": N_MELS}, user_propensity),
]
IDS = ["popularity-items", "mf-items", "mf-communities", "lightgcn-communities", "sasrec-history",
       "content-text", "content-audio", "content-propensity"]


def _fit_auc(kind, settings, train, test, catalogue, features) -> float:
    model = build_recommender(kind, settings)
    context = Context(catalogue, None if features is None else (lambda n: features), seed=0)
    model.fit(train, context)
    scores = model.score(test)
    assert scores.shape == (len(test),) and np.all((scores >= 0) & (scores <= 1))
    return auc([r["label"] for r in test], scores)


@pytest.mark.parametrize(("kind", "settings", "make"), CASES, ids=IDS)
def test_learns_the_planted_signal(kind, settings, make, rng) -> None:
    assert _fit_auc(kind, settings, *make(rng)) > 0.8


@pytest.mark.parametrize(("kind", "settings", "make"), CASES, ids=IDS)
def test_near_chance_when_training_labels_are_shuffled(kind, settings, make, rng) -> None:
    train, test, catalogue, features = make(rng)
    assert abs(_fit_auc(kind, settings, shuffled(train, rng), test, catalogue, features) - 0.5) < 0.12



def test_user_rate_needs_no_training_and_follows_the_history_only(rng) -> None:
    train, test, catalogue, features = user_propensity(rng)
    assert _fit_auc("user_rate", {}, [], test, catalogue, features) > 0.8
    # Targets whose labels no longer follow their own history: nothing left to find.
    assert abs(_fit_auc("user_rate", {}, train, shuffled(test, rng), catalogue, features) - 0.5) < 0.12
