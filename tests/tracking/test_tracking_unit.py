"""Tracking settings and the default path: off, nothing imports MLflow; on without it, a clear error."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_process import free_port, running

from atflrec.config import ConfigError, load_config
from atflrec.tracking import TrackingConfig, flatten, numeric, open_run, public_reference, resolve_uri
from atflrec.training.distributed_config import TrainConfig


def test_a_uri_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="tracking.uri: holds credentials.*MLFLOW_TRACKING_") as caught:
        load_config(TrainConfig, None, ["tracking.uri=https://alice:s3cret@mlflow.example.com"])
    assert "s3cret" not in str(caught.value)


def test_uris_and_local_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_uri(None) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert resolve_uri("runs/store") == f"sqlite:///{tmp_path / 'runs/store/mlflow.db'}"
    for uri in ("http://127.0.0.1:5000", "sqlite:////data/m.db", "databricks"):
        assert resolve_uri(uri) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.internal")
    assert resolve_uri(None) == "https://mlflow.internal"


def test_params_flatten_and_metrics_keep_finite_numbers() -> None:
    flat = flatten({"model": {"lora": {"r": 8, "targets": ["q_proj"]}}, "out": None, "name": "x", "empty": {}})
    assert flat == {"model.lora.r": "8", "model.lora.targets": '["q_proj"]', "out": "null", "name": "x", "empty": "{}"}
    assert len(flatten({"long": "x" * 10_000})["long"]) == 6000
    assert numeric({"auc": 0.7, "n": 3, "done": True, "nan": float("nan"), "stage": "text"}) == {"auc": 0.7, "n": 3.0}


def test_a_local_store_uri_is_not_shown_to_clients() -> None:
    local = {"uri": "sqlite:////srv/mlruns/mlflow.db", "experiment_id": "1", "run_id": "abc"}
    assert public_reference(local) == {"experiment_id": "1", "run_id": "abc"}
    assert public_reference({**local, "uri": "https://mlflow.internal"})["uri"] == "https://mlflow.internal"
    assert public_reference(None) is None


def test_tracking_on_without_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'atflrec\[tracking\]'"):
        open_run(TrackingConfig(enabled=True), kind="train", name="x")


OFF_PATH = """
import sys
from atflrec.cli import main
from atflrec.demo import DemoConfig, tracking_uri
from atflrec.evaluation import runner
from atflrec.serving import app
from atflrec.tracking import TrackingConfig, tracked
from atflrec.training import distributed
from atflrec.tuning import search

with tracked(TrackingConfig(), kind="train", name="off") as run:
    assert not run and run.ref is None
assert tracking_uri(DemoConfig().tracking, None) is None
assert main(sys.argv[1:]) == 0
assert "mlflow" not in sys.modules, "tracking is off, yet mlflow was imported"
"""


def test_with_tracking_off_a_training_run_never_imports_mlflow(tracking_bench, tmp_path: Path) -> None:
    bench = tracking_bench
    command = [sys.executable, "-c", OFF_PATH, "train-local", "--samples", str(bench["samples"]),
               "--features", str(bench["features"]), "--out", str(tmp_path / "model"), "shots=8",
               f"model.base_model={bench['base']}", "model.encoder.n_mels=8", "model.encoder.width=16",
               "model.lora.r=4", "model.fusion.strategy=early", "optim.batch_size=4", "max_eval_samples=8",
               "eval_splits=[val,test]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "tracking" not in json.loads((tmp_path / "model" / "atflrec_model.json").read_text())


def test_the_demo_prints_the_command_that_opens_mlflows_ui_on_its_local_store(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from atflrec.demo import DemoConfig, tracking_note, tracking_uri

    config = DemoConfig(workdir=str(tmp_path / "demo"), tracking={"enabled": True})
    uri = tracking_uri(config.tracking, Path(config.workdir))
    assert uri == f"sqlite:///{tmp_path / 'demo/mlruns/mlflow.db'}"
    run = open_run(TrackingConfig(enabled=True, uri=uri), kind="train", name="demo-train", params={"shots": 64})
    (tmp_path / "report.md").write_text("# report\n")
    run.log_file(tmp_path / "report.md")
    run.end()
    assert (tmp_path / "demo/mlruns/artifacts" / run.ref.run_id / "artifacts/report.md").is_file()  # beside the db

    command = shlex.split(tracking_note(uri, "atflrec").splitlines()[-1])
    assert command[:2] == ["mlflow", "ui"] and command[command.index("--backend-store-uri") + 1] == uri
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    with running(command[1:], port, tmp_path / "ui.log") as url:
        assert MlflowClient(url).get_run(run.ref.run_id).data.params == {"shots": "64"}
