"""The text-only and audio-only LLM baselines (tiny local model) learn a planted content signal
that carries over to cold-start items, and sit near chance when the training labels are shuffled."""

from __future__ import annotations

import numpy as np
import pytest
from planted import N_MELS, content_signal, shuffled, title_signal

from atflrec.baselines import Context, build_recommender
from atflrec.metrics import auc

# (kind, data): each LLM on the modality its prompts carry.
CASES = [
    ("text_llm", title_signal),
    ("audio_llm", lambda rng: content_signal(rng, "audio")),
]


def _fit_auc(base, kind, train, test, catalogue, features) -> float:
    settings = {"model": {"base_model": str(base), "encoder": {"n_mels": N_MELS, "width": 16, "pooling": "mean"},
                          "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                "optim": {"lr": 1e-2, "encoder_lr": 1e-2, "batch_size": 8, "epochs": 2}}
    model = build_recommender(kind, settings)
    model.fit(train, Context(catalogue, lambda n: features, seed=0))
    scores = model.score(test)
    assert scores.shape == (len(test),) and np.all((scores > 0) & (scores < 1))
    return auc([r["label"] for r in test], scores)


@pytest.mark.parametrize(("kind", "make"), CASES, ids=[kind for kind, _ in CASES])
def test_llm_learns_the_planted_signal(tiny_base_dir, kind, make, rng) -> None:
    assert _fit_auc(tiny_base_dir, kind, *make(rng)) > 0.8


@pytest.mark.parametrize(("kind", "make"), CASES, ids=[kind for kind, _ in CASES])
def test_llm_is_near_chance_when_training_labels_are_shuffled(tiny_base_dir, kind, make, rng) -> None:
    # A few hundred rows leave a chance correlation the LLM can pick up either way, so one
    # permutation can land 0.1 from chance: average over three.
    train, test, catalogue, features = make(rng)
    aucs = [_fit_auc(tiny_base_dir, kind, shuffled(train, rng), test, catalogue, features) for _ in range(3)]
    assert abs(np.mean(aucs) - 0.5) < 0.08, aucs
