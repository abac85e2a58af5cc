"""The history-signal analysis (bench/history_signal.py) separates a history that carries the label
from one that carries nothing; the SmolLM2 integration test's docstring rests on its numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from atflrec.data.synth import SynthConfig
from atflrec.samples import SampleConfig

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "history_signal.py"


def load_analysis():
    spec = importlib.util.spec_from_file_location("history_signal", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.analyse


def genre_only(noise: float) -> SynthConfig:
    """Users like by genre alone (weight 4), with ``noise`` added to the logit."""
    like = {"genre": 4.0, "mode": 0.0, "tempo": 0.0, "energy": 0.0, "quality": 0.0, "noise": noise}
    return SynthConfig(seed=0, users=80, items=120, genres=3, like=like)


def test_a_history_that_decides_the_label_is_found_at_64_shots() -> None:
    result = load_analysis()(genre_only(0.0), SampleConfig(), shots=[64], draws=5)
    assert result["noise_free"] > 0.8
    assert result["ideal_rule"] > 0.7
    assert result["oracle_lr_64"]["mean"] > 0.7 and result["oracle_lr_all"] > 0.7
    assert result["held_out_rows"] > 100 and result["oracle_lr_64"]["draws"] == 5


def test_labels_drowned_in_noise_leave_every_score_near_chance() -> None:
    result = load_analysis()(genre_only(100.0), SampleConfig(), shots=[64], draws=5)
    for score in (result["noise_free"], result["ideal_rule"], result["oracle_lr_64"]["mean"], result["oracle_lr_all"]):
        assert abs(score - 0.5) < 0.12, result
