"""The LLM recommenders on the tiny local model: they train and score through the common
interface, share adapters exactly where the method allows, and the fusion stage trained on cached
adapter outputs equals the training loop's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import N_MELS, content_signal

from atflrec.baselines import Context, build_recommender
from atflrec.baselines.llm import LLMRecommender
from atflrec.model.batch import AUDIO, TEXT
from atflrec.model.fusion import stage_rows
from atflrec.training.local import build_model, fit_audio_normalisation, make_collator, predict, train_stage


@pytest.fixture
def data(rng):
    train, test, catalogue, features = content_signal(rng, "audio", items=40, rows=48)
    return train[:16], test[:12], catalogue, features


def _settings(base, strategy: str | None = None) -> dict:
    model = {"base_model": str(base), "encoder": {"n_mels": N_MELS, "width": 16, "pooling": "mean"},
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    if strategy is not None:
        model["fusion"] = {"strategy": strategy, "head_hidden": 8}
    return {"model": model, "optim": {"lr": 5e-3, "encoder_lr": 5e-3, "fusion_lr": 5e-2, "batch_size": 8, "epochs": 1}}


@pytest.mark.parametrize(("kind", "strategy", "adapters"), [
    ("text_llm", None, ("text",)),
    ("audio_llm", None, ("audio",)),
    ("atflrec", "early", ("shared",)),
    ("atflrec", "late_weighted", ("text", "audio")),
])
def test_trains_and_scores_through_the_interface(tiny_base_dir, data, kind, strategy, adapters) -> None:
    train, test, catalogue, features = data
    model = build_recommender(kind, _settings(tiny_base_dir, strategy))
    context = Context(catalogue, lambda n: features, seed=0)
    model.fit(train, context)
    assert model.model.adapters == adapters
    scores = model.score(test)
    assert scores.shape == (len(test),) and np.all((scores > 0) & (scores < 1))
    untrained = build_model(model.settings.model, seed=0)
    before = predict(untrained, test, make_collator(untrained, features), batch_size=16)
    assert not np.allclose(scores, before, atol=1e-4)  # training moved the scores
    # The cached scoring path equals the model's own forward pass.
    np.testing.assert_allclose(scores, predict(model.model, test, model.collator, 16), atol=1e-5)


def test_separate_adapters_are_the_text_and_audio_only_models(tiny_base_dir, data) -> None:
    train, test, catalogue, features = data
    context = Context(catalogue, lambda n: features, seed=0)
    text = build_recommender("text_llm", _settings(tiny_base_dir))
    audio = build_recommender("audio_llm", _settings(tiny_base_dir))
    fused = build_recommender("atflrec", _settings(tiny_base_dir, "late_weighted"))
    for model in (text, audio, fused):
        model.fit(train, context)
    assert len([k for k in context.shared if k.startswith("llm-adapter:")]) == 2  # text and audio, once each
    with torch.no_grad():  # the fused model's adapters score exactly like the lone models'
        for alone, name, kind in ((text, "text", TEXT), (audio, "audio", AUDIO)):
            mine = fused.model.run_adapter(name, fused.collator(test).prompts[kind]).margin
            theirs = alone.model.run_adapter(name, alone.collator(test).prompts[kind]).margin
            torch.testing.assert_close(mine, theirs)
    # A different LoRA rank is a different text adapter: nothing to share.
    other = _settings(tiny_base_dir)
    other["model"]["lora"]["r"] = 2
    build_recommender("text_llm", other).fit(train, context)
    assert len([k for k in context.shared if k.startswith("llm-adapter:")]) == 3


@pytest.mark.parametrize("fit_on", ["train", "validation"])
def test_fusion_on_cached_outputs_equals_the_training_loop(tiny_base_dir, data, fit_on) -> None:
    train, test, catalogue, features = data
    validation = test[6:]  # held out from training; with fit_on validation the fusion trains on these
    settings = _settings(tiny_base_dir, "late_head")
    settings["model"]["fusion"].update({"fit_on": fit_on, "history_share": True})
    recommender = build_recommender("atflrec", settings)
    assert isinstance(recommender, LLMRecommender)
    recommender.fit(train, Context(catalogue, lambda n: features, seed=3, validation=validation))

    settings = recommender.settings
    model = build_model(settings.model, seed=3)
    items = sorted({i for r in train for i in [r["item_id"], *r["liked_ids"], *r["disliked_ids"]]})
    fit_audio_normalisation(model, items, features)
    collator = make_collator(model, features)
    for stage in model.fusion.stages():  # the plain loop: the LLM runs in every fusion step
        train_stage(model, stage, stage_rows(stage, settings.model.fusion, train, validation), collator,
                    settings.optim, seed=3)
    model.configure_stage(None)
    for mine, theirs in zip(recommender.model.fusion.parameters(), model.fusion.parameters()):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(recommender.score(test), predict(model, test, collator, 16), atol=1e-4)


def test_adapters_select_on_the_context_validation_rows(tiny_base_dir, data, capsys) -> None:
    """With validation rows an adapter's stage evaluates every epoch, stops after ``patience``
    evaluations without improvement and keeps the best epoch: here the validation labels are the
    training labels flipped, so every epoch that fits the training rows makes validation worse."""
    train, test, catalogue, features = data
    settings = _settings(tiny_base_dir)
    settings["optim"].update({"epochs": 6, "patience": 1, "lr": 5e-2})
    flipped = [{**r, "label": 1 - r["label"]} for r in train]
    selected = build_recommender("text_llm", settings)
    selected.fit(train, Context(catalogue, lambda n: features, seed=0, validation=flipped))
    lines = capsys.readouterr().out
    assert "early stop after epoch" in lines and "restored the best epoch (1" in lines
    plain = build_recommender("text_llm", settings)
    plain.fit(train, Context(catalogue, lambda n: features, seed=0))
    assert "early stop after" not in capsys.readouterr().out  # no validation rows: all six epochs
    assert not np.allclose(selected.score(test), plain.score(test), atol=1e-4)
    # The validation rows are part of what the adapter is: a memo never mixes the two.
    assert selected.adapter_key("text") != plain.adapter_key("text")
