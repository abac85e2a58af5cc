"""A tiny benchmark (generated data, a real feature store, samples) and an evaluation config
that runs every model kind and two ablations on it with the tiny local LLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atflrec.testing import build_tiny_base

N_MELS = 8


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> dict[str, Path]:
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.samples import SampleConfig, make_samples

    root = tmp_path_factory.mktemp("eval-bench")
    generate(SynthConfig(users=24, items=40, clip_seconds=0.5, interactions_per_user=(15, 20)), root / "data")
    build_feature_store(root / "data", str(root / "features"), FeatureConfig(n_mels=[N_MELS, 16], clip_seconds=0.5))
    make_samples(load_dataset(root / "data"), root / "samples", SampleConfig(cold_item_fraction=0.2))
    return {"data": root / "data", "features": root / "features", "samples": root / "samples",
            "base": build_tiny_base(root / "tiny-base")}


def _mapping(bench: dict[str, Path]) -> dict[str, Any]:
    return {
        "samples": str(bench["samples"]), "features": str(bench["features"]),
        "shots": [8, 16], "seeds": [0, 1], "max_eval_samples": 30,
        "llm": {
            "model": {"base_model": str(bench["base"]), "encoder": {"n_mels": N_MELS, "width": 16},
                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"head_hidden": 8}},
            "optim": {"batch_size": 4, "epochs": 1, "max_steps": 1},
        },
        "models": [
            {"name": "user_rate"},
            {"name": "popularity", "search": {"prior": [0.0, 5.0]}},
            {"name": "mf", "settings": {"epochs": 20}},
            {"name": "lightgcn", "settings": {"epochs": 20}},
            {"name": "sasrec", "settings": {"epochs": 10}},
            {"name": "content", "settings": {"n_mels": N_MELS},
             "search": {"C": [0.01, 1.0], "like_share": [True, False]}},
            {"name": "text_llm", "shots": [8], "seeds": [0]},
            {"name": "audio_llm", "shots": [8], "seeds": [0]},
            {"name": "atflrec", "shots": [8], "seeds": [0]},
        ],
        "ablations": [
            {"name": "pooling", "model": "atflrec", "key": "model.encoder.pooling", "values": ["mean", "max"]},
            {"name": "fusion", "model": "atflrec", "key": "model.fusion.strategy",
             "values": ["late_weighted", "late_head"]},
        ],
    }


@pytest.fixture
def eval_mapping(bench) -> dict[str, Any]:
    """An EvalConfig mapping: every kind, small shots, two seeds, the tiny LLM, two ablations."""
    return _mapping(bench)


@pytest.fixture(scope="session")
def small_run(bench, tmp_path_factory: pytest.TempPathFactory):
    """That evaluation, run once: (config, output directory, report path)."""
    from atflrec.evaluation import EvalConfig, run_evaluation

    config = EvalConfig.model_validate(_mapping(bench))
    out = tmp_path_factory.mktemp("eval-run")
    return config, out, run_evaluation(config, out)
