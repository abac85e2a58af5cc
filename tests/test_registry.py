"""Registries: names resolve to implementations; an unknown name fails listing the choices."""

from __future__ import annotations

import pytest

from atflrec.config import ConfigError, load_config
from atflrec.model.audio_encoder import POOLINGS, AudioEncoderConfig
from atflrec.model.fusion import STRATEGIES, FusionConfig
from atflrec.registry import Registry


def test_register_lookup_and_sorted_iteration() -> None:
    registry: Registry[int] = Registry("number")
    registry.register("two")(2)
    registry.register("one")(1)
    assert list(registry) == ["one", "two"]
    assert registry["two"] == 2 and "one" in registry and "three" not in registry
    with pytest.raises(ValueError, match=r"unknown number 'three'; choose one of \['one', 'two'\]"):
        registry["three"]


@pytest.mark.parametrize(
    ("model", "override", "expected"),
    [
        (AudioEncoderConfig, "pooling=median",
         f"pooling: Value error, unknown pooling 'median'; choose one of {list(POOLINGS)}"),
        (FusionConfig, "strategy=stacked",
         f"strategy: Value error, unknown fusion strategy 'stacked'; choose one of {list(STRATEGIES)}"),
    ],
)
def test_unknown_name_in_config_names_key_and_choices(model, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(model, None, [override])
    assert expected in str(err.value)
