"""The signal analysis (bench/history_signal.py) that chose the benchmark's defaults: each term of the
like function, set as the only nonzero weight, is found by the probe meant for it, and labels drowned
in noise leave every score near chance."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from bench_scripts import load_script

from atflrec.data.synth import LikeWeights, SynthConfig
from atflrec.samples import SampleConfig

SHOTS = [64, 256]


@pytest.fixture(scope="module")
def analysis() -> ModuleType:
    return load_script("history_signal")


def only(term: str, weight: float = 4.0, noise: float = 0.0, **settings: Any) -> SynthConfig:
    """A world whose likes follow one term of the like function (every other weight 0)."""
    like = {name: 0.0 for name in LikeWeights.model_fields} | {term: weight, "noise": noise}
    return SynthConfig(seed=0, users=80, items=120, genres=4, like=like, **settings)


def run(analysis: ModuleType, config: SynthConfig) -> dict[str, Any]:
    return analysis.analyse(config, SampleConfig(), shots=SHOTS, draws=4)


def test_user_bias_is_found_by_the_like_share_alone(analysis: ModuleType) -> None:
    result = run(analysis, only("user_bias"))
    for where in ("warm", "cold"):
        assert result[where]["like_share"] > 0.75, result[where]
        assert abs(result[where]["item_only_256"]["mean"] - 0.5) < 0.1  # nothing about the item matters


@pytest.mark.parametrize("term", ["genre_appeal", "energy_appeal", "quality"])
def test_item_appeal_is_found_from_the_item_alone(analysis: ModuleType, term: str) -> None:
    result = run(analysis, only(term))
    for where in ("warm", "cold"):
        assert result[where]["item_only_64"]["mean"] > 0.7, (term, result[where])
        assert abs(result[where]["like_share"] - 0.5) < 0.12  # and not from who the user is


def test_the_shared_taste_needs_the_history_compared_with_the_item(analysis: ModuleType) -> None:
    result = run(analysis, only("taste_shared"))
    for where in ("warm", "cold"):
        assert result[where]["oracle_256"]["mean"] > 0.7, result[where]
        assert result[where]["oracle_256"]["mean"] > result[where]["item_only_256"]["mean"] + 0.15


def test_audible_quality_is_seen_through_the_audio_view_only(analysis: ModuleType) -> None:
    # Warm rows: the cold split's dozen items are too few to tell one item-level view from another.
    heard = run(analysis, only("quality", audible_quality=1.0))["warm"]
    assert heard["audio_view_256"]["mean"] > 0.7
    assert heard["audio_view_256"]["mean"] > heard["text_view_256"]["mean"] + 0.15
    silent = run(analysis, only("quality", audible_quality=0.0))["warm"]
    assert abs(silent["audio_view_256"]["mean"] - 0.5) < 0.1


def test_the_text_view_reads_what_the_tags_reveal(analysis: ModuleType) -> None:
    # Warm rows: the cold split's dozen items are too few to tell one item-level view from another.
    tagged = run(analysis, only("energy_appeal", tag_attribute_rate=1.0))["warm"]
    untagged = run(analysis, only("energy_appeal", tag_attribute_rate=0.0))["warm"]
    assert tagged["text_view_64"]["mean"] > untagged["text_view_64"]["mean"] + 0.1


def test_labels_drowned_in_noise_leave_every_score_near_chance(analysis: ModuleType) -> None:
    result = run(analysis, only("user_bias", noise=100.0))
    for where in ("warm", "cold"):
        block = result[where]
        scores = [block["ceiling"], block["like_share"], block["popularity"],
                  *(block[f"{probe}_{n}"]["mean"] for probe in ("oracle", "item_only", "audio_view", "text_view")
                    for n in SHOTS)]
        assert all(abs(score - 0.5) < 0.12 for score in scores), block


def test_summary_and_goals_read_the_issue_keys(analysis: ModuleType) -> None:
    summary = analysis.summarise([run(analysis, SynthConfig(seed=0, users=80, items=120))])
    assert tuple(summary) == analysis.SUMMARY_KEYS
    assert summary["popularity_cold"] == 0.5  # a cold item was never seen: every one ties
    assert set(analysis.goals(summary).values()) <= {True, False}
