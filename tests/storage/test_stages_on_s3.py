"""Every stage that writes, on an S3 store (moto on 127.0.0.1): the feature store, a Train run killed
after its first checkpoint and resumed from S3, its best/ exported to S3, a search whose OUT is on S3
with its best/ also exported locally; and the secret key in no file, object or log line.

The stages run in their own process (``s3_stages.py``) with its own Ray: its workers inherit the
process's environment, as a cluster node's processes do, so credentials reach them from the
environment alone (the session's Ray started before any S3 variable was set)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from s3_server import SECRET, objects, s3_bucket, s3_environment

from atflrec import storage
from atflrec.features.store import load_features, read_manifest
from atflrec.model.artifact import META_FILE, read_meta
from atflrec.testing import registered_checkpoint

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("s3_stages.py")

pytestmark = pytest.mark.integration


@dataclass
class Stages:
    s3: str
    local: Path
    ray_logs: Path
    output: str  # both processes' stdout and stderr
    outcome: dict[str, Any]


@pytest.fixture(scope="module")
def stages(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stages]:
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.samples import SampleConfig, make_samples
    from atflrec.testing import build_tiny_base

    root = tmp_path_factory.mktemp("s3-stages")
    generate(SynthConfig(users=12, items=24, clip_seconds=0.5, interactions_per_user=(8, 12)), root / "data")
    make_samples(load_dataset(root / "data"), root / "samples", SampleConfig(cold_item_fraction=0.2))
    ray_logs = tmp_path_factory.mktemp("ray")
    with s3_bucket(s3_endpoint) as s3:
        settings = {"s3": s3, "local": str(root / "out"), "data": str(root / "data"),
                    "samples": str(root / "samples"), "base_model": str(build_tiny_base(root / "base"))}
        env = {**os.environ, **s3_environment(s3_endpoint), "RAY_TMPDIR": str(ray_logs)}

        def stage(phase: str) -> list[str]:
            return [sys.executable, str(SCRIPT), phase, json.dumps(settings)]

        with open(root / "first.log", "w") as log:
            first = subprocess.Popen(stage("first"), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            deadline = time.time() + 300
            while time.time() < deadline and first.poll() is None and not registered_checkpoint(f"{s3}/train/run"):
                time.sleep(0.5)
            os.killpg(first.pid, signal.SIGKILL)  # the run and the Ray it started
            first.wait()
        output = (root / "first.log").read_text()
        assert registered_checkpoint(f"{s3}/train/run"), output[-3000:]
        time.sleep(2)  # let the killed Ray processes go
        rest = subprocess.run(stage("rest"), cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
        output += rest.stdout + rest.stderr
        assert rest.returncode == 0, output[-4000:]
        outcome = json.loads(next(line for line in rest.stdout.splitlines() if line.startswith("OUTCOME "))[8:])
        yield Stages(s3, root / "out", ray_logs, output, outcome)


def test_a_feature_store_on_s3_reads_back_equal_to_a_local_one(stages: Stages) -> None:
    keys = objects(f"{stages.s3}/features")
    assert "features/manifest.json" in keys and "features/quarantine.parquet" in keys
    assert any(k.startswith("features/mel8/part-") for k in keys)
    remote, local = load_features(f"{stages.s3}/features", 8), load_features(str(stages.local / "features"), 8)
    assert sorted(remote) == sorted(local) and len(remote) > 0
    assert all(np.array_equal(remote[i], local[i]) for i in local)
    manifests = [read_manifest(f"{stages.s3}/features"), read_manifest(str(stages.local / "features"))]
    assert manifests[0]["param_hash"] == manifests[1]["param_hash"]
    assert manifests[0]["last_run"]["counts"] == manifests[1]["last_run"]["counts"]


def test_a_train_run_checkpoints_to_s3_resumes_from_there_and_exports_best_to_s3(stages: Stages) -> None:
    train = stages.outcome["train"]
    resumed = train["resumed_from"]
    assert resumed is not None and resumed["global_step"] > 0 and resumed["optimizer_restored"], resumed
    assert train["worker_groups"] == 2  # the first phase's and the resumed one's, in the run's log on S3
    assert train["run_path"] == f"{stages.s3}/train/run"
    assert train["best_checkpoint"].startswith(f"{stages.s3}/train/run/checkpoint-")
    checkpoints = storage.list_dirs(f"{stages.s3}/train/run", prefix="checkpoint")
    assert train["best_checkpoint"] in checkpoints
    assert train["exported"] == f"{stages.s3}/exports/train-best"
    exported = objects(train["exported"])
    assert {f"exports/train-best/{name}" for name in (META_FILE, "encoder.safetensors", "fusion.safetensors")} \
        <= set(exported)
    assert f"exports/train-best/{storage.INCOMPLETE}" not in exported
    assert set(train["metrics"]) == {"test"}


def test_a_search_on_s3_writes_its_trials_tables_plots_and_best_there(stages: Stages) -> None:
    tune = f"{stages.s3}/tune"
    assert stages.outcome["tune"]["best"] == f"{tune}/best"
    found = objects(tune)
    results = pacsv.read_csv(pa.py_buffer(found["tune/results.csv"])).to_pylist()
    assert [r["status"] for r in results] == ["completed"] * 2, results
    keys = set(found)
    assert {"tune/space.yaml", "tune/results.parquet", "tune/results.csv", "tune/curves.parquet",
            f"tune/best/{META_FILE}", "tune/best/train_config.yaml", "tune/best/trial.json"} <= keys
    assert any(k.startswith("tune/plots/") and k.endswith(".png") for k in keys)
    trials = storage.list_dirs(f"{tune}/trials", prefix="trial-")
    assert len(trials) == 2
    for trial in trials:
        assert storage.read_text(f"{trial}/trial_outcome.json") is not None
        reports = [json.loads(line) for line in storage.read_text(f"{trial}/reports.jsonl").splitlines()]
        assert reports and all(r["checkpoint_path"].startswith(f"{trial}/checkpoint") for r in reports)
    assert any(k.startswith("tune/search/") for k in keys)  # Tune's own experiment state
    # The best trial exported to a local directory too, from its checkpoint on S3.
    assert read_meta(stages.local / "tune-best") == json.loads(objects(f"{tune}/best")[f"tune/best/{META_FILE}"])


def test_the_secret_key_is_in_no_object_file_or_log(stages: Stages) -> None:
    secret = SECRET.encode()
    assert all(secret not in data for data in objects(stages.s3).values())
    written = [p for p in [*stages.local.rglob("*"), *stages.ray_logs.rglob("*")] if p.is_file() and not p.is_socket()]
    assert written and not [p for p in written if secret in p.read_bytes()]
    assert SECRET not in stages.output
