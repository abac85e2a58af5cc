"""bench/tallrec.py without an LLM: the user_rate score, the importer path and the results' shape."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType

import pytest
from bench_scripts import load_script

from atflrec.baselines import Context, build_recommender

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "tests" / "assets" / "tallrec_book_fixture.json"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("tallrec")


def user_rate(rows: list[dict]) -> list[float]:
    """The user_rate kind as the script builds it: the raw liked share, 0.5 for no history."""
    model = build_recommender("user_rate", {"prior": 0.0})
    model.fit([], Context(items={}))
    return model.score(rows).tolist()


def test_user_rate_is_the_liked_share_of_the_history() -> None:
    rows = [{"liked_ids": ["a", "b", "c"], "disliked_ids": ["d"]},
            {"liked_ids": [], "disliked_ids": []},
            {"liked_ids": [], "disliked_ids": ["d", "e"]}]
    assert user_rate(rows) == [0.75, 0.5, 0.0]


def test_splits_go_through_the_importer(bench: ModuleType, tmp_path) -> None:
    data = tmp_path / "book"
    data.mkdir()
    (data / "valid.json").write_text(BOOK.read_text())
    rows = bench.load_split(data, "valid", tmp_path / "work").to_pylist()
    assert [r["item_id"] for r in rows][2] == "Harbour Lights by Tom Reyes"
    assert user_rate(rows) == pytest.approx([2 / 3, 0.0, 1.0])


def test_results_have_one_key_per_size_run(bench: ModuleType, tmp_path) -> None:
    out = tmp_path / "tallrec_book.json"
    detail = {
        "settings": {"base_model": "m", "test_rows": 10},
        "user_rate_auc": 0.6,
        "published_tallrec_book": {"values": bench.PUBLISHED_TALLREC_BOOK, "source": ""},
        "text_llm_runs": [{"shots": 16, "seed": 0, "auc": 0.5}, {"shots": 16, "seed": 1, "auc": 0.7},
                          {"shots": 64, "seed": 0, "auc": 0.55}],
    }
    bench.write(argparse.Namespace(out=out), detail)
    top = json.loads(out.read_text())
    assert top == {"16": {"text_llm": pytest.approx(0.6), "user_rate": 0.6},
                   "64": {"text_llm": 0.55, "user_rate": 0.6}}
    assert json.loads((tmp_path / "tallrec_book_detail.json").read_text())["text_llm_runs"] == detail["text_llm_runs"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_a_rerun_extends_the_same_settings_and_refuses_others(bench: ModuleType, tmp_path) -> None:
    out = tmp_path / "tallrec_book.json"
    settings = {"base_model": "m", "test_rows": 10, "shots": [16], "seeds": [0, 1], "import_s": 0.5}
    earlier = {"settings": settings, "user_rate_auc": 0.6, "note": "first", "finished": False,
               "published_tallrec_book": {"values": bench.PUBLISHED_TALLREC_BOOK, "source": ""},
               "text_llm_runs": [{"shots": 16, "seed": 0, "auc": 0.5}, {"shots": 16, "seed": 1, "auc": 0.7}]}
    bench.write(argparse.Namespace(out=out), earlier)
    args = argparse.Namespace(out=out)

    rerun = {"settings": {**settings, "shots": [256], "seeds": [0], "import_s": 0.9}, "text_llm_runs": []}
    assert bench.resume(args, rerun) == {(16, 0), (16, 1)}
    assert rerun["text_llm_runs"] == earlier["text_llm_runs"]
    assert (rerun["settings"]["shots"], rerun["settings"]["seeds"]) == ([16, 256], [0, 1])
    assert rerun["earlier_invocations"][0]["note"] == "first"

    other = {"settings": {**settings, "test_rows": 20}, "text_llm_runs": []}
    with pytest.raises(SystemExit, match="other settings \\(test_rows\\)"):
        bench.resume(args, other)
    assert bench.resume(argparse.Namespace(out=tmp_path / "new.json"), other) == set()


def test_optimizer_knobs_added_since_are_recorded_and_changed_ones_refused(bench: ModuleType, tmp_path) -> None:
    out = tmp_path / "tallrec_book.json"
    settings = {"base_model": "m", "test_rows": 10, "shots": [16], "seeds": [0], "optim_defaults": {"lr": 0.001}}
    earlier = {"settings": settings, "user_rate_auc": 0.6,
               "published_tallrec_book": {"values": bench.PUBLISHED_TALLREC_BOOK, "source": ""},
               "text_llm_runs": [{"shots": 16, "seed": 0, "auc": 0.5}]}
    bench.write(argparse.Namespace(out=out), earlier)
    args = argparse.Namespace(out=out)

    grown = {"settings": {**settings, "optim_defaults": {"lr": 0.001, "schedule": "constant"}}, "text_llm_runs": []}
    assert bench.resume(args, grown) == {(16, 0)}
    assert grown["optim_defaults_added_since_earlier_fits"] == {"schedule": "constant"}

    changed = {"settings": {**settings, "optim_defaults": {"lr": 0.01, "schedule": "constant"}}, "text_llm_runs": []}
    with pytest.raises(SystemExit, match="other settings \\(optim_defaults\\)"):
        bench.resume(args, changed)
