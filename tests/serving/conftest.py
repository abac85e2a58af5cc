"""Fixtures for the serving tests: a tiny base model, a tiny built-in dataset with its feature
store, tiny model artifacts with every trained part randomised (so each adapter, the encoder and
the fusion all move the scores), and one Serve instance on a free loopback port."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from atflrec.testing import build_tiny_base

N_MELS = 8
CLIP_SECONDS = 0.5


def randomise_trained_parts(model, seed: int = 0) -> None:
    """LoRA B matrices start at zero and the late_head's last layer too: give every trained part
    random values so a wrong adapter, prefix or audio token changes the scores."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        named = [(n, p) for n, p in model.llm.named_parameters() if "lora_" in n]
        named += list(model.encoder.named_parameters()) + list(model.fusion.named_parameters())
        for _, parameter in named:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)


def model_config(base: Path, strategy: str, tokens_per_item: int = 2, pooling: str = "max",
                 history_share: bool = False) -> Any:
    from atflrec.model.network import ModelConfig

    return ModelConfig(
        base_model=str(base),
        encoder={"n_mels": N_MELS, "width": 16, "layers": 2, "pooling": pooling, "tokens_per_item": tokens_per_item},
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
        fusion={"strategy": strategy, "head_hidden": 8, "history_share": history_share},
    )


@pytest.fixture(scope="session")
def tiny_base_serving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base-serving"))


@pytest.fixture(scope="session")
def make_model(tiny_base_serving: Path) -> Callable[..., Any]:
    """A tiny model of a fusion strategy, trained parts randomised, eval mode."""
    from atflrec.training.local import build_model

    def make(strategy: str, seed: int = 0, **config: Any):
        model = build_model(model_config(tiny_base_serving, strategy, **config), seed=seed)
        randomise_trained_parts(model, seed)
        model.configure_stage(None)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def serving_data(tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> dict[str, Path]:
    """A very small built-in benchmark dataset and its 8-bin feature store (Ray Data)."""
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store

    root = tmp_path_factory.mktemp("serving-data")
    generate(SynthConfig(users=6, items=14, clip_seconds=CLIP_SECONDS, interactions_per_user=(5, 8)), root / "data")
    build_feature_store(root / "data", str(root / "features"),
                        FeatureConfig(n_mels=[N_MELS], clip_seconds=CLIP_SECONDS))
    return {"dataset": root / "data", "features": root / "features"}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, make_model, serving_data) -> dict[str, Path]:
    """Two served models: early fusion and late fusion with a learned head (different adapters)."""
    from atflrec.features.store import load_features
    from atflrec.model.artifact import save_artifact

    root = tmp_path_factory.mktemp("serving-artifacts")
    clips = list(load_features(str(serving_data["features"]), N_MELS).values())
    out = {}
    for seed, strategy in enumerate(["early", "late_head"]):
        model = make_model(strategy, seed=seed)
        model.encoder.fit_normalisation(clips)
        out[strategy] = save_artifact(model, root / strategy)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    """Serve's HTTP proxy on a free loopback port for the whole session; shut down at the end."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
