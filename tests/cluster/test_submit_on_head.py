"""`atflrec submit` and `atflrec jobs` against a real Ray head (``ray start --head``, token auth),
each command run as the console script a user would type."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray_head import Head

from atflrec.data.synth import SynthConfig, generate
from atflrec.features.store import load_features, read_manifest

pytestmark = pytest.mark.integration


def test_features_stage_runs_as_a_job(ray_head: Head, tmp_path: Path) -> None:
    data, store = tmp_path / "dataset", tmp_path / "features"
    generate(SynthConfig(users=5, items=8), data)

    submitted = ray_head.atflrec(
        "submit", "features", "--data", str(data), "--out", str(store), "--n-mels", "40", "--clip-seconds", "1",
        "--address", ray_head.address, "--runtime-env", "cluster/runtime_env.yaml",
        "--job-id", "atflrec-features-test", "--wait",
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert submitted.stdout.splitlines()[0] == "atflrec-features-test"
    assert "8 input items = 8 featurised + 0 already stored + 0 quarantined" in submitted.stdout  # the job's log

    status = ray_head.atflrec("jobs", "status", "atflrec-features-test", "--address", ray_head.address)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == "atflrec-features-test: SUCCEEDED"

    manifest = read_manifest(str(store))
    assert manifest is not None and manifest["stored_items"] == 8
    features = load_features(str(store), 40)
    assert len(features) == 8 and all(f.shape == (98, 40) for f in features.values())

    logs = ray_head.atflrec("jobs", "logs", "atflrec-features-test", "--address", ray_head.address)
    assert logs.returncode == 0 and "8 featurised" in logs.stdout

    listed = ray_head.atflrec("jobs", "list", "--address", ray_head.address)
    assert "atflrec-features-test  SUCCEEDED  atflrec features --data" in listed.stdout


def test_a_failing_stage_fails_the_wait(ray_head: Head, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dataset"
    result = ray_head.atflrec("submit", "--address", ray_head.address, "--wait", "data", "validate", str(missing))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not exist" in result.stdout  # the stage's own message, from the job's log
    assert "FAILED" in result.stderr


def test_stop_a_running_job(ray_head: Head, tmp_path: Path) -> None:
    submitted = ray_head.atflrec("submit", "--address", ray_head.address, "--job-id", "atflrec-stop-test",
                                 "data", "synth", "--out", str(tmp_path / "big"), "items=2000")
    assert submitted.returncode == 0, submitted.stderr
    stopped = ray_head.atflrec("jobs", "stop", "atflrec-stop-test", "--address", ray_head.address)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stdout + stopped.stderr
    followed = ray_head.atflrec("jobs", "logs", "atflrec-stop-test", "--follow", "--address", ray_head.address)
    assert followed.returncode == 1 and "STOPPED" in followed.stderr


def test_a_wrong_or_missing_token_is_refused_clearly(ray_head: Head, tmp_path: Path) -> None:
    wrong = ray_head.atflrec("jobs", "list", "--address", ray_head.address, RAY_AUTH_TOKEN="not-the-token")
    missing = ray_head.atflrec("jobs", "list", "--address", ray_head.address,
                               RAY_AUTH_TOKEN_PATH="", HOME=str(tmp_path))  # no token anywhere
    for result in (wrong, missing):
        assert result.returncode == 2
        assert f"the Ray cluster at {ray_head.address} refused this client's token" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_job_id_cannot_be_reused(ray_head: Head, tmp_path: Path) -> None:
    first = ray_head.atflrec("submit", "--address", ray_head.address, "--job-id", "atflrec-twice",
                             "data", "validate", str(tmp_path))
    assert first.returncode == 0, first.stderr
    second = ray_head.atflrec("submit", "--address", ray_head.address, "--job-id", "atflrec-twice",
                              "data", "validate", str(tmp_path))
    assert second.returncode == 2 and "atflrec-twice" in second.stderr and "Traceback" not in second.stderr
