"""A real MLflow tracking server (SQLite backend, artifacts proxied) on 127.0.0.1, and a tiny
benchmark (data, an 8-bin feature store, samples, a tiny base model) for the runs it records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_process import free_port, running


@pytest.fixture(scope="package")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's URL; its log is ``server.log`` in its temporary directory."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    args = ["server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
            str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running(args, port, root / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def tracking_bench(tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> dict[str, Path]:
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.samples import SampleConfig, make_samples
    from atflrec.testing import build_tiny_base

    root = tmp_path_factory.mktemp("tracking-bench")
    generate(SynthConfig(users=12, items=24, clip_seconds=0.5, interactions_per_user=(8, 12)), root / "data")
    build_feature_store(root / "data", str(root / "features"), FeatureConfig(n_mels=[8], clip_seconds=0.5))
    make_samples(load_dataset(root / "data"), root / "samples", SampleConfig(cold_item_fraction=0.2))
    return {"data": root / "data", "features": root / "features", "samples": root / "samples",
            "base": build_tiny_base(root / "tiny-base")}
