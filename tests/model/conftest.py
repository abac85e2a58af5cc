"""Fixtures for the model tests: one tiny base model directory per session, sample rows, features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atflrec.testing import build_tiny_base

N_MELS = 8


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"))


def sample_row(index: int, target: str, label: int, liked: list[str], disliked: list[str],
               user: str = "u0") -> dict[str, Any]:
    return {
        "sample_id": f"{user}#{index}", "user_id": user, "item_id": target, "title": f"song {target}",
        "label": label, "timestamp": index,
        "liked_ids": liked, "liked_titles": [f"song {i}" for i in liked],
        "disliked_ids": disliked, "disliked_titles": [f"song {i}" for i in disliked],
    }


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return [
        sample_row(0, "a", 1, ["b", "c"], ["d"]),
        sample_row(1, "b", 0, [], ["a", "d"], user="u1"),
        sample_row(2, "c", 1, ["a"], [], user="u1"),
    ]


@pytest.fixture
def features() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    # Different frame counts per item exercise the padding mask; "d" has no audio.
    return {item: rng.normal(size=(4 + i, N_MELS)).astype(np.float16) for i, item in enumerate("abc")}


@pytest.fixture
def model_config(tiny_base: Path) -> Callable[..., Any]:
    from atflrec.model.network import ModelConfig

    def make(strategy: str = "early", pooling: str = "max", tokens_per_item: int = 1,
             history_share: bool = False) -> ModelConfig:
        return ModelConfig(
            base_model=str(tiny_base),
            encoder={"n_mels": N_MELS, "width": 16, "layers": 2, "pooling": pooling,
                     "tokens_per_item": tokens_per_item},
            lora={"r": 4, "alpha": 8, "dropout": 0.0},
            fusion={"strategy": strategy, "head_hidden": 8, "history_share": history_share},
        )

    return make
