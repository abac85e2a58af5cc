"""The config system: YAML + key=value overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from atflrec.config import (
    ConfigError,
    ConfigRef,
    StrictModel,
    apply_overrides,
    dump_config,
    find_config,
    load_config,
    merge,
    packaged_configs,
)


class Inner(StrictModel):
    rank: int = Field(8, ge=1)
    pooling: Literal["mean", "max"] = "max"


class Outer(StrictModel):
    name: str = "run"
    lr: float = 1e-4
    n_mels: list[int] = [80]
    lora: Inner = Inner()


def test_defaults_without_file() -> None:
    config = load_config(Outer)
    assert config == Outer()


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nlora:\n  rank: 4\n")
    config = load_config(Outer, path, ["lora.pooling=mean", "n_mels=[40,80]", "lr=3e-4"])
    assert config.name == "a"
    assert config.lora.rank == 4 and config.lora.pooling == "mean"
    assert config.n_mels == [40, 80]
    assert config.lr == pytest.approx(3e-4)


def test_override_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lora: {rank: 4}\n")
    assert load_config(Outer, path, ["lora.rank=16"]).lora.rank == 16


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.rnak=4"], "lora.rnak: unknown key"),
        (["colour=red"], "colour: unknown key"),
        (["lora.rank=0"], "lora.rank: Input should be greater than or equal to 1"),
        (["lora.pooling=median"], "lora.pooling: Input should be 'mean' or 'max'"),
        (["lr=fast"], "lr: Input should be a valid number"),
        (["n_mels=[40,x]"], "n_mels.1: Input should be a valid integer"),
    ],
)
def test_errors_name_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, overrides)
    assert expected in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lora:\n  rank: 4\n  alpha: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert "bad.yaml" in str(err.value) and "lora.alpha: unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("- a\n- b\n", "must hold a mapping"), ("a: [1, 2\n", "not valid YAML")],
)
def test_bad_yaml_files(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_config(Outer, path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, "/nonexistent/config.yaml")


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1"])
def test_malformed_overrides(text: str) -> None:
    with pytest.raises(ConfigError):
        apply_overrides({}, [text])


def test_override_into_a_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="name: is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_an_override_replaces_a_whole_mapping() -> None:
    """``--checkpoint`` becomes ``models={...}``: the file's own models must not survive beside it."""
    data = {"models": {"best": "runs/demo/model"}, "limits": {"max_k": 100, "max_history": 50}}
    result = apply_overrides(data, ['models={"tiny": "/a"}', "limits.max_k=3"])
    assert result == {"models": {"tiny": "/a"}, "limits": {"max_k": 3, "max_history": 50}}
    assert data["models"] == {"best": "runs/demo/model"}  # the input is left alone


def test_merge_sets_dotted_paths_and_merges_sections_key_by_key() -> None:
    base = {"optim": {"lr": 1e-3, "epochs": 2}, "model": None, "tags": ["a"]}
    merged = merge(base, {"optim": {"epochs": 5}, "model.lora.r": 4, "tags": ["b"], "space": {"optim.lr": [1]}})
    assert merged == {"optim": {"lr": 1e-3, "epochs": 5}, "model": {"lora": {"r": 4}}, "tags": ["b"],
                      "space": {"optim.lr": [1]}}  # keys inside a mapping value are plain, dots and all
    assert base == {"optim": {"lr": 1e-3, "epochs": 2}, "model": None, "tags": ["a"]}  # untouched


def test_merge_copies_so_the_result_shares_nothing_with_its_inputs() -> None:
    base, change = {"a": {"b": [1]}}, {"c": {"d": [2]}}
    merged = merge(base, change)
    merged["a"]["b"].append(3)
    merged["c"]["d"].append(3)
    assert (base, change) == ({"a": {"b": [1]}}, {"c": {"d": [2]}})


def test_merge_through_a_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="a.b: is a value, not a section; cannot set a.b.c"):
        merge({"a": {"b": 1}}, {"a.b.c": 2})


def test_dump_round_trips(tmp_path: Path) -> None:
    config = load_config(Outer, None, ["lora.rank=32", "n_mels=[64]"])
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(config))
    assert load_config(Outer, path) == config


class Refers(StrictModel):
    other: ConfigRef = "train/cpu"
    inner: Inner = Inner()


def test_find_config_takes_a_shipped_name_with_or_without_suffix(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config("train/cpu") == find_config("train/cpu.yaml") == packaged_configs()["train/cpu"]
    assert find_config("deepspeed/zero2_cpu").name == "zero2_cpu.json"


def test_find_config_prefers_a_path_and_never_looks_in_the_cwd_for_a_files_reference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train").mkdir()
    (tmp_path / "mine" / "train" / "cpu.yaml").write_text("lr: 1\n")
    (tmp_path / "other.yaml").write_text("lr: 2\n")
    monkeypatch.chdir(tmp_path)
    assert find_config("other.yaml") == tmp_path / "other.yaml"  # a command-line path: the CWD
    assert find_config(tmp_path / "other.yaml") == tmp_path / "other.yaml"  # absolute
    assert find_config("train/cpu.yaml", tmp_path / "mine") == tmp_path / "mine" / "train" / "cpu.yaml"
    with pytest.raises(ConfigError, match="'other.yaml': no such file in .*mine, nor a shipped config"):
        find_config("other.yaml", tmp_path / "mine")  # beside the referring file only, not in the CWD
    with pytest.raises(ConfigError, match="does not exist"):
        find_config(tmp_path / "missing.yaml")


def test_a_reference_in_a_file_resolves_beside_it_and_is_held_as_a_name_or_an_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "ds.json").write_text("{}")
    (folder / "by_path.yaml").write_text("other: ds.json\n")
    (folder / "by_name.yaml").write_text("other: eval/quick.yaml\n")
    monkeypatch.chdir(tmp_path)  # the CWD holds no ds.json
    assert load_config(Refers, folder / "by_path.yaml").other == str(folder / "ds.json")
    assert load_config(Refers, folder / "by_name.yaml").other == "eval/quick"
    assert load_config(Refers, None, ["other=configs/ds.json"]).other == str(folder / "ds.json")
    with pytest.raises(ConfigError, match="other: Value error, config 'nope.json': no such file"):
        load_config(Refers, folder / "by_path.yaml", ["other=nope.json"])
