"""bench/capacity.py: the projections' arithmetic on hand-made results, null and "not measured yet"
for what the results lack, and the committed document and JSON in step with the committed results."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bench_scripts import BENCH, load_script

DATE = "2026-01-01T00:00:00+00:00"
# Small numbers that make the arithmetic checkable by hand.
RESULTS: dict[str, dict[str, Any]] = {
    "features.json": {"date": DATE, "cores": 2, "clip_seconds": 4.0, "n_mels": [40, 80],
                      "variants": {"ray_pipeline": {"clips_per_s": 200.0},
                                   "multimel_one_pass": {"clips_per_s": 150.0}}},
    "train.json": {"date": DATE, "samples_per_s": {"ray_ds_1w": 1.0, "ray_ds_2w": 1.5},
                   "setup": {"fusion": "early", "base_model": "smollm2-135m-instruct"}},
    # 10 s fixed and 2 s per trial-epoch of wall time on 2 cores: FIFO 6 × 10 + 24 × 2, ASHA 6 × 10 + 10 × 2
    "tune.json": {"date": DATE, "trials": 6, "cores": 2, "reports_asha_vs_fifo": 0.5,
                  "fifo": {"seconds": 108.0, "trial_epochs": 24}, "asha": {"seconds": 80.0, "trial_epochs": 10}},
    "tune_scale.json": {"date": DATE, "trials": 200, "lost": 0, "repeated": 0, "rate_last_vs_first_window": 0.9,
                        "driver_rss_mb": 300.0, "gcs_rss_mb": 100.0, "peak_disk_mb": 50.0},
    # retrieval alone: 1000 ms at 100,000 items (0.01 ms per item)
    "serve.json": {"date": DATE, "recommend": {"shared_prefix_s": 5.0, "candidates": 50},
                   "recommend_p50_ms": {"1000": 110.0, "10000": 200.0, "100000": 1100.0},
                   "scale": {"levels": {"100000": {"retrieve_p50_ms": 1000.0}}}},
}


@pytest.fixture(scope="module")
def capacity() -> ModuleType:
    return load_script("capacity")


def values(capacity: ModuleType, results: dict[str, Any] = RESULTS, **scenario: Any) -> dict[str, Any]:
    ledger = capacity.build(results, capacity.Scenario(**scenario))
    return {key: figure.value for key, figure in ledger.figures.items()}


def without(file: str, key: str) -> dict[str, Any]:
    results = copy.deepcopy(RESULTS)
    del results[file][key]
    return results


def test_features_scale_from_the_measured_clip_length(capacity: ModuleType) -> None:
    v = values(capacity)
    assert v["feature_clips_per_s_per_core"] == 100.0
    assert v["feature_clips_per_s_per_core_scenario"] == pytest.approx(100.0 * 4 / 30)
    assert v["feature_core_hours"] == pytest.approx(1e6 * 30 / 4 / 100 / 3600)  # 20.8
    assert (v["feature_cores_1h"], v["feature_cores_8h"]) == (21, 3)
    assert (v["feature_nodes_1h"], v["feature_nodes_8h"]) == (3, 1)
    assert v["feature_store_tb"] == pytest.approx(1e6 * 4 * 2998 * 120 / 1e12)  # 2,998 frames of 30 s


def test_doubling_clip_length_doubles_core_hours(capacity: ModuleType) -> None:
    short, long = values(capacity, clip_seconds=30.0), values(capacity, clip_seconds=60.0)
    assert long["feature_core_hours"] == pytest.approx(2 * short["feature_core_hours"])
    assert long["feature_store_tb"] == pytest.approx(2 * short["feature_store_tb"], rel=1e-3)
    assert values(capacity, catalogue_items=2_000_000)["feature_core_hours"] == pytest.approx(
        2 * short["feature_core_hours"])


def test_training_units_and_the_7b_projection(capacity: ModuleType) -> None:
    v = values(capacity)
    assert v["train_samples_per_s_per_worker_2w"] == 0.75
    assert v["train_scaling_efficiency_2w"] == 0.75
    audio_tokens = sum(capacity.PROMPT_TOKENS["audio"])
    assert v["train_flops_per_sample_measured"] == pytest.approx(6 * 134.5e6 * audio_tokens)
    assert v["train_7b_samples_per_s_per_gpu_early"] == pytest.approx(312e12 * 0.3 / (6 * 7.61e9 * audio_tokens))
    # late_weighted: text and audio adapters trained (6·N), then both run frozen for the fusion stage (2·N)
    text_tokens = sum(capacity.PROMPT_TOKENS["text"])
    assert v["train_7b_flops_per_sample"] == pytest.approx(7.61e9 * 8 * (text_tokens + audio_tokens))
    assert v["train_7b_run_wall_seconds"] == pytest.approx(v["train_7b_run_gpu_seconds"] / 8)


def test_search_splits_fixed_and_per_epoch_cost_and_asha_cuts_only_the_epochs(capacity: ModuleType) -> None:
    v = values(capacity, trials=1000)
    assert v["tune_epoch_core_seconds"] == pytest.approx(4.0)  # 2 s × 2 cores
    assert v["tune_trial_fixed_core_seconds"] == pytest.approx(20.0)  # 10 s × 2 cores
    fixed, compute = 20.0, v["search_trial_compute_core_seconds"]
    assert v["search_core_hours_fifo"] == pytest.approx(1000 * (fixed + compute) / 3600)
    assert v["search_core_hours_asha"] == pytest.approx(1000 * (fixed + 0.5 * compute) / 3600)
    assert v["search_hours_asha_4_nodes"] == pytest.approx(v["search_core_hours_asha"] / (4 * 8))
    assert v["search_7b_gpu_hours_asha"] == pytest.approx(0.5 * v["search_7b_gpu_hours_fifo"])
    assert values(capacity, trials=2000)["search_core_hours_fifo"] == pytest.approx(2 * v["search_core_hours_fifo"])
    assert v["search_state_mb_at_scenario"] == pytest.approx((300 + 100) * 1000 / 200)  # 200 trials scaled to 1000


def test_serving_rerank_retrieval_and_replicas(capacity: ModuleType) -> None:
    v = values(capacity)
    assert v["rerank_ms_per_candidate"] == 100.0
    assert v["rerank_core_seconds_per_request"] == pytest.approx(5.0)  # 50 candidates
    assert v["serve_cpu_rerank_cores"] == pytest.approx(500.0)  # at 100 requests/s
    assert v["retrieval_ms_per_100k_items"] == pytest.approx(1000.0)
    assert v["retrieval_seconds_per_request"] == pytest.approx(10.0)  # 1M items
    assert v["serve_cpu_replicas"] == 1500
    assert v["full_catalogue_core_hours_per_request"] == pytest.approx(1e6 * 0.1 / 3600)
    assert v["index_mb_per_replica"] == pytest.approx(1e6 * 65 * 4 / 1e6)
    assert values(capacity, requests_per_s=200.0)["serve_7b_gpus"] == pytest.approx(2 * v["serve_7b_gpus"])


def test_a_missing_key_is_null_with_the_benchmark_to_rerun(capacity: ModuleType, tmp_path: Path) -> None:
    results = without("serve.json", "scale")
    ledger = capacity.build(results)
    text = "not measured yet (rerun bench/serve_load.py)"
    for key in ("retrieval_ms_per_100k_items", "serve_cpu_retrieval_cores", "serve_cpu_replicas"):
        assert ledger[key].value is None and ledger[key].missing == text
    assert ledger["serve_cpu_rerank_cores"].value == pytest.approx(500.0)  # what is measured still counts
    for file, data in results.items():
        (tmp_path / file).write_text(json.dumps(data))
    capacity.write(tmp_path, tmp_path / "CAPACITY.md", tmp_path / "capacity.json")
    assert f"**{text}**" in (tmp_path / "CAPACITY.md").read_text()
    saved = json.loads((tmp_path / "capacity.json").read_text())["derived"]["serving"]["retrieval_ms_per_100k_items"]
    assert saved["value"] is None and saved["missing"] == text


def test_missing_result_files_leave_every_measured_figure_null(capacity: ModuleType) -> None:
    ledger = capacity.build({})
    measured = [f for f in ledger.figures.values() if f.id.startswith("M")]
    assert measured and all(f.value is None and "not measured yet (rerun bench/" in f.missing for f in measured)
    assert "missing (run bench/features.py)" in capacity.render(ledger, {}, capacity.Scenario())


def test_the_committed_document_and_json_match_the_committed_results(capacity: ModuleType, tmp_path: Path) -> None:
    capacity.write(BENCH / "results", tmp_path / "CAPACITY.md", tmp_path / "capacity.json")
    stale = "out of date: rerun python bench/capacity.py and commit what it writes"
    assert (tmp_path / "CAPACITY.md").read_text() == (BENCH.parent / "cluster" / "CAPACITY.md").read_text(), stale
    assert (tmp_path / "capacity.json").read_text() == (BENCH / "results" / "capacity.json").read_text(), stale
