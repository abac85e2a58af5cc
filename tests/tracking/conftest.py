"""A real MLflow tracking server (SQLite backend, artifacts proxied) on 127.0.0.1, and a tiny
benchmark (data, an 8-bin feature store, samples, a tiny base model) for the runs it records."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

MLFLOW = str(Path(sys.executable).parent / "mlflow")
START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(root: Path) -> str:
    return (root / "server.log").read_text()[-3000:]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's URL; its log is ``server.log`` in its temporary directory."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited with {server.returncode}:\n{_tail(root)}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {START_TIMEOUT_S} s:\n{_tail(root)}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


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
