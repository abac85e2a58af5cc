"""The pure parts of bench/serve_load.py: the catalogue expansion of the recommend test (real files,
read back by the serving catalogue), the held-out users and metrics of the quality part, and the
shape of the results. No Ray, no model."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from bench_scripts import load_script

from atflrec.data.format import interactions_table, items_table, read_items, write_dataset
from atflrec.features import store
from atflrec.features.store import load_features
from atflrec.serving.catalogue import Catalogue

FRAMES, MELS = 5, (8, 16)
ORIGINALS = ["a", "b", "c", "d"]  # "d" has no stored features (quarantined)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("serve_load")


@pytest.fixture
def source(tmp_path: Path) -> dict[str, Path]:
    """A four-item dataset with audio files and a feature store (two Mel-bin counts) of three of them,
    written by the dataset and store writers themselves."""
    data, features = tmp_path / "source" / "data", tmp_path / "source" / "features"
    items = items_table(ORIGINALS, [f"Song {i}" for i in ORIGINALS], [[i, "live"] for i in ORIGINALS],
                        [f"audio/{i}.wav" for i in ORIGINALS])
    write_dataset(data, items, interactions_table(["u1", "u1", "u2"], ["a", "b", "a"], [1, 0, 1], [1, 2, 3]))
    (data / "audio").mkdir()
    for item in ORIGINALS:
        (data / "audio" / f"{item}.wav").write_bytes(item.encode())
    stored, n_frames = ORIGINALS[:3], [5, 3, 4]
    rng = np.random.default_rng(0)
    for n_mels in MELS:
        arrays = rng.normal(size=(len(stored), FRAMES, n_mels)).astype(np.float16)
        store.write_part(str(features), n_mels, "part-src-0.parquet", stored, n_frames, arrays)
    index = pa.table({"item_id": stored, "audio_path": [f"audio/{i}.wav" for i in stored],
                      "sha256": [f"sha-{i}" for i in stored], "part": ["part-src-0.parquet"] * 3,
                      "n_frames": n_frames}, schema=store.INDEX_SCHEMA)
    manifest = {"store_version": store.STORE_VERSION, "param_hash": "p", "index": "index-src.parquet",
                "params": {"n_mels": list(MELS), "frames": FRAMES, "clip_seconds": 0.5}, "last_run": {"run_id": "src"}}
    store.commit(str(features), manifest, index, store.QUARANTINE_SCHEMA.empty_table())
    return {"data": data, "features": features}


@pytest.mark.parametrize("size", [4, 5, 9, 12])
def test_copy_ids_are_unique_exact_and_cycle_through_the_originals(bench: ModuleType, size: int) -> None:
    pairs = bench.copy_ids(ORIGINALS, size)
    assert len(pairs) == size == len({new for new, _ in pairs})
    assert pairs[:4] == [(i, i) for i in ORIGINALS]
    assert [old for _, old in pairs] == [ORIGINALS[n % 4] for n in range(size)]
    assert all(new == f"{old}~{n // 4}" for n, (new, old) in enumerate(pairs) if n >= 4)


def test_copy_ids_refuse_too_few_items_and_colliding_ids(bench: ModuleType) -> None:
    with pytest.raises(ValueError, match="at least as many"):
        bench.copy_ids(ORIGINALS, 3)
    with pytest.raises(ValueError, match="collide"):
        bench.copy_ids(["a", "a~1"], 4)


def test_an_expanded_catalogue_shares_its_originals_features_and_serves(bench: ModuleType, source: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    data, features = bench.expand_catalogue(source["data"], str(source["features"]), 10, tmp_path / "scale-10")
    items = read_items(data).to_pylist()
    ids = [row["item_id"] for row in items]
    assert len(ids) == 10 == len(set(ids))
    originals = {row["item_id"]: row for row in read_items(source["data"]).to_pylist()}
    for new, old in bench.copy_ids(ORIGINALS, 10):
        row = next(r for r in items if r["item_id"] == new)
        assert (row["title"], row["tags"], row["audio_path"]) == tuple(originals[old][k]
                                                                       for k in ("title", "tags", "audio_path"))
        assert (data / row["audio_path"]).read_bytes() == old.encode()
    for n_mels in MELS:
        before, after = load_features(str(source["features"]), n_mels), load_features(str(features), n_mels)
        copied = {new: old for new, old in bench.copy_ids(ORIGINALS, 10) if old != "d"}
        assert set(after) == set(copied)  # "d" and its copies stay without features, as in the source
        for new, old in copied.items():
            np.testing.assert_array_equal(after[new], before[old])
    catalogue = Catalogue.load(str(data), str(features), [8], str(tmp_path / "items"))
    assert len(catalogue) == 10 and catalogue.titles["b~2"] == "Song b"
    manifest = json.loads((features / "manifest.json").read_text())
    assert manifest["params"] == json.loads((source["features"] / "manifest.json").read_text())["params"]
    stamp = (features / "manifest.json").stat().st_mtime_ns
    assert bench.expand_catalogue(source["data"], str(source["features"]), 10, tmp_path / "scale-10") == (data,
                                                                                                         features)
    assert (features / "manifest.json").stat().st_mtime_ns == stamp  # reused, not written again


def test_an_expanded_store_splits_into_parts_its_index_names(bench: ModuleType, source: dict[str, Path],
                                                              tmp_path: Path) -> None:
    features = tmp_path / "features-13"
    bench.expand_store(str(source["features"]), bench.copy_ids(ORIGINALS, 13), str(features), part_rows=4)
    assert len(list((features / "mel8").glob("part-*.parquet"))) == 3  # 10 stored items, 4 per part
    before, after = load_features(str(source["features"]), 16), load_features(str(features), 16)
    assert len(after) == 10
    np.testing.assert_array_equal(after["c~2"], before["c"])


def row(user: str, item: str, label: int, time: int, liked: list[str], disliked: list[str]) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "label": label, "timestamp": time, "liked_ids": liked,
            "disliked_ids": disliked}


def test_held_out_users_take_the_earliest_test_history_and_their_liked_test_items(bench: ModuleType) -> None:
    rows = [
        row("u1", "t2", 1, 20, ["h1", "t1"], ["h2"]),  # the later test sample: its history holds t1
        row("u1", "t1", 1, 10, ["h1"], ["h2"]),
        row("u2", "s1", 0, 10, ["h3"], []),  # liked no test item: left out
        row("u2", "s2", 0, 11, ["h3", "s1"], []),
        row("u3", "r1", 0, 10, [], ["h4"]),
        row("u3", "r2", 1, 11, [], ["h4", "r1"]),
    ]
    cases = bench.held_out_users(rows, 5, seed=0)
    assert [c.user for c in cases] == ["u1", "u3"]
    assert cases[0].history == (("h1", True), ("h2", False)) and cases[0].liked == {"t1", "t2"}
    assert cases[1].history == (("h4", False),) and cases[1].liked == {"r2"}
    one = bench.held_out_users(rows, 1, seed=3)
    assert len(one) == 1 and one == bench.held_out_users(rows, 1, seed=3) and one[0] in cases


def test_stage_quality_is_ndcg_at_10_of_both_rankings_and_recall_of_the_shortlist(bench: ModuleType) -> None:
    cases = [bench.HeldOut("u1", (("h", True),), frozenset({"a"})),
             bench.HeldOut("u2", (("h", True),), frozenset({"b", "z"}))]
    full = [["a", "x"], ["b", "x"]]
    two_stage = [["x", "a"], ["b", "x"]]
    shortlists = [["x", "a"], ["b", "x", "y"]]
    quality = bench.stage_quality(cases, full, two_stage, shortlists, candidates=3)
    ideal_two = 1 + 1 / np.log2(3)
    assert quality["full_ndcg10"] == pytest.approx((1 + 1 / ideal_two) / 2)
    assert quality["two_stage_ndcg10"] == pytest.approx((1 / np.log2(3) + 1 / ideal_two) / 2)
    assert quality["two_stage_ndcg10_vs_full"] == pytest.approx(quality["two_stage_ndcg10"] / quality["full_ndcg10"])
    assert quality["retrieval_recall_at_candidates"] == pytest.approx((1 + 0.5) / 2)
    nothing = bench.stage_quality(cases[:1], [["x"]], [["x"]], [["x"]], candidates=3)
    assert nothing["full_ndcg10"] == 0.0 and nothing["two_stage_ndcg10_vs_full"] is None


def level(p50: float) -> dict[str, Any]:
    return {"p50_ms": p50, "throughput_rps": 1000 / p50, "errors": 0, "warmup_errors": 0, "index_build_s": 0.5}


def figures(bench: ModuleType, sizes: list[int], stages: dict[str, Any]) -> dict[str, Any]:
    load = {"batched": {"c1": level(30.0), "c32": level(10.0)}, "unbatched": {"c1": level(20.0), "c32": level(20.0)}}
    recommend = {"ratio": 5.0}
    return bench.headline(load, 12.0, 6.0, recommend, {s: level(100.0 + s / 1000) for s in sizes}, stages, 0)


def test_the_results_carry_every_goal_and_the_issue_keys(bench: ModuleType) -> None:
    stages = {"two_stage_ndcg10_vs_full": 0.97, "two_stage_ndcg10": 0.31, "full_ndcg10": 0.32,
              "retrieval_recall_at_candidates": 0.8}
    result = figures(bench, [1_000, 10_000, 100_000], stages)
    assert result["recommend_p50_ms"] == {"1000": 101.0, "10000": 110.0, "100000": 200.0}
    assert result["recommend_100k_vs_1k"] == pytest.approx(200 / 101, abs=1e-3)
    assert result["serve_overhead_ms_c1"] == 8.0 and result["serve_app_overhead_ms_c1"] == 2.0
    assert result["batched_vs_unbatched_c32"] == 2.0 and result["two_stage_ndcg10_vs_full"] == 0.97
    met = bench.goals_met(result)
    assert set(met) == set(bench.GOALS)
    assert met == {"batched_vs_unbatched_c32": True, "recommend_prefix_vs_naive": True, "serve_overhead_ms_c1": True,
                   "serve_app_overhead_ms_c1": True, "recommend_p50_ms.100000": True, "recommend_100k_vs_1k": True,
                   "two_stage_ndcg10_vs_full": True, "errors": True}
    summary = bench.scale_summary({s: level(100.0 + s / 1000) for s in [1_000, 100_000]}, "smollm2", 2)
    assert summary["index_build_s"] == {"1000": 0.5, "100000": 0.5}
    assert summary["largest_vs_smallest"] == {"sizes": [1_000, 100_000], "ratio": 1.98}
    json.dumps({**result, "goals_met": met, "scale": summary}, allow_nan=False)


def test_goals_not_measured_are_none_not_failed(bench: ModuleType) -> None:
    result = figures(bench, [200, 400], {"skipped": "no --model given"})
    assert result["recommend_p50_ms"] == {"200": 100.2, "400": 100.4}
    assert result["recommend_100k_vs_1k"] is None and result["two_stage_ndcg10_vs_full"] is None
    met = bench.goals_met(result)
    assert met["recommend_p50_ms.100000"] is None and met["recommend_100k_vs_1k"] is None
    assert met["two_stage_ndcg10_vs_full"] is None and met["errors"] is True
