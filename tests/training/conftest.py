"""Fixtures for the training tests: a tiny base model directory and a planted-signal sample set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atflrec.testing import build_tiny_base


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base-training"))


@pytest.fixture
def planted() -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Liked targets are titled "rock" and sound loud; disliked ones "jazz" and quiet."""
    rng = np.random.default_rng(0)
    rows, features = [], {}
    for n in range(32):
        label = n % 2
        item = f"t{n}"
        features[item] = (rng.normal(size=(6, 8)) + (3.0 if label else -3.0)).astype(np.float16)
        rows.append({
            "sample_id": f"u{n % 3}#{n}", "user_id": f"u{n % 3}", "item_id": item,
            "title": ("rock " if label else "jazz ") + str(n), "label": label, "timestamp": n,
            "liked_ids": [], "liked_titles": [], "disliked_ids": [], "disliked_titles": [],
        })
    return rows, features
