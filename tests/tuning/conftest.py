"""Fixtures for the tuning tests: a very small benchmark (data and samples, no feature store yet:
the search builds it) and a tiny base model; ``tune_setup.make_space`` writes a search over them."""

from __future__ import annotations

from pathlib import Path

import pytest

from atflrec.testing import build_tiny_base


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base-tuning"))


@pytest.fixture(scope="session")
def tune_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic data (12 users, 24 items, 0.5 s clips) and its samples."""
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.samples import SampleConfig, make_samples

    root = tmp_path_factory.mktemp("tune-benchmark")
    generate(SynthConfig(users=12, items=24, clip_seconds=0.5, interactions_per_user=(8, 12)), root / "data")
    make_samples(load_dataset(root / "data"), root / "samples", SampleConfig(cold_item_fraction=0.2))
    return root
