"""Fixtures for the baseline tests (planted-signal data sets live in planted.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory):
    from atflrec.testing import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny-base-baselines"))
