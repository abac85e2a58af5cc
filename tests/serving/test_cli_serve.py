"""`atflrec serve` deploys the application of a shipped Serve config, with CLI shorthands."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from ray import serve

from atflrec.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_atflrec_serve_deploys_the_local_config(serve_port, serving_data, artifacts, tmp_path, capfd) -> None:
    code = main([
        "serve", "--config", str(ROOT / "serve/local.yaml"), "--checkpoint", f"tiny={artifacts['early']}",
        "--checkpoint", str(artifacts["late_head"]), "--data", str(serving_data["dataset"]),
        "--features", str(serving_data["features"]), "--port", str(serve_port), "--no-blocking",
        f"items_dir={tmp_path / 'items'}", "limits.max_k=3", "--log-dir", str(tmp_path / "logs"),
    ])
    try:
        assert code == 0
        assert f"http://127.0.0.1:{serve_port}/" in capfd.readouterr().out
        base = f"http://127.0.0.1:{serve_port}"
        assert httpx.get(f"{base}/healthz", timeout=60).json()["models"] == ["tiny", "late_head"]
        info = httpx.get(f"{base}/v1/model", timeout=60).json()
        assert info["default_model"] == "tiny" and info["limits"]["max_k"] == 3
        assert serve.status().applications["atflrec"].status == "RUNNING"
    finally:
        serve.delete("atflrec")


def test_atflrec_serve_refuses_a_missing_checkpoint_before_deploying(serving_data, tmp_path, capsys) -> None:
    code = main(["serve", "--config", str(ROOT / "serve/local.yaml"), "--checkpoint", str(tmp_path / "nothing"),
                 "--data", str(serving_data["dataset"]), "--features", str(serving_data["features"]), "--no-blocking",
                 "--log-dir", str(tmp_path / "logs")])
    assert code == 2
    assert "is not an ATFLRec artifact" in capsys.readouterr().err


def test_the_demo_step_deploys_answers_one_recommend_request_and_tears_down(serve_port, serving_data, artifacts,
                                                                           capsys) -> None:
    from atflrec.serving.demo import serve_and_query

    result = serve_and_query(artifacts["early"], serving_data["dataset"], str(serving_data["features"]), k=3,
                             port=serve_port)
    items = result["response"]["items"]
    seen = {h["item_id"] for h in result["request"]["history"]}
    assert len(items) == 3 and not seen & {i["item_id"] for i in items}
    out = capsys.readouterr().out
    assert "v1/recommend" in out and f"shortlisted {result['response']['retrieved']} of" in out
    assert "atflrec" not in serve.status().applications


def test_the_demo_spot_check_scores_the_served_model_beside_the_floor(serving_data, artifacts, tmp_path) -> None:
    """The served model's cold-start AUC, through the serving scorer, equals the offline path's on
    the same rows, and user_rate and popularity are scored on those rows too."""
    import numpy as np

    from atflrec.data.format import load_dataset
    from atflrec.demo import spot_check
    from atflrec.metrics import auc
    from atflrec.model.artifact import load_artifact
    from atflrec.samples import SampleConfig, make_samples, read_samples
    from atflrec.training.local import load_item_features, make_collator, predict

    samples = tmp_path / "samples"
    make_samples(load_dataset(serving_data["dataset"]), samples, SampleConfig(cold_item_fraction=0.4, min_history=0))
    result = spot_check(artifacts["early"], serving_data["dataset"], str(serving_data["features"]), samples, rows=40,
                        items_dir=tmp_path / "items")
    table = read_samples(samples, "cold")
    assert 2 <= table.num_rows <= 40  # every cold row is used, in file order
    cold = table.to_pylist()
    assert set(result) == {"rows", "served model", "user_rate", "popularity"} and result["rows"] == len(cold)
    assert result["popularity"] == 0.5  # cold items were never seen: they all tie
    model = load_artifact(artifacts["early"])
    features = load_item_features(str(serving_data["features"]), model.config.encoder.n_mels, [table])
    offline = predict(model, cold, make_collator(model, features), batch_size=8)
    assert result["served model"] == pytest.approx(auc([r["label"] for r in cold], offline), abs=1e-3)
    assert np.isfinite(result["user_rate"])
