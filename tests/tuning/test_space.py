"""Search spaces: every shipped space loads with keys that name TrainConfig fields; bad spaces fail
before any trial with the key in the message; a sampled point becomes a valid trial config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from atflrec.cli import main
from atflrec.config import ConfigError, build_config, find_config, packaged_configs
from atflrec.model.fusion import STRATEGIES
from atflrec.training.distributed_config import TrainConfig
from atflrec.tuning.space import TuneSpace, expected_reports, load_space, lora_config, plan

SPACES = [name for name in packaged_configs() if name.startswith("tune/")]


def test_the_three_spaces_ship() -> None:
    assert set(SPACES) >= {"tune/default", "tune/demo", "tune/cluster"}


@pytest.mark.parametrize("name", SPACES)
def test_every_shipped_space_loads_and_its_knobs_name_train_config_keys(name: str) -> None:
    assert find_config(name).read_text().splitlines()[0].startswith(f"# atflrec tune --space {name} ")
    search = load_space(name)
    for key in search.knobs:
        node = TrainConfig.model_fields
        *sections, leaf = key.split(".")
        for section in sections:
            node = node[section].annotation.model_fields
        assert leaf in node, key
    # Every point the space can produce is a valid training config (the ends of each range and
    # every choice were validated by load_space; here: one sampled point end to end).
    point = {key: d.candidates()[0] for key, d in search.space.space.items()}
    config = search.trial_config(point, run_name="trial-x", storage_path="/tmp/runs")
    assert ((config.run.name, config.run.storage_path, config.out, config.address)
            == ("trial-x", "/tmp/runs", None, None))


def test_the_default_space_covers_the_papers_knobs() -> None:
    search = load_space("tune/default")
    space = search.space.space
    assert space["model.lora.r"].args == [4, 8, 16, 32]
    assert set(space["model.encoder.pooling"].args) == {"mean", "max", "attention", "mean_max"}
    assert search.n_mels == [40, 64, 80, 128]
    assert space["optim.lr"].kind == "loguniform"
    # LoRA configuration through the fusion strategy: both the shared and the separate one.
    assert {lora_config(s) for s in space["model.fusion.strategy"].args} == {"shared", "separate"}
    assert search.max_reports == 3 * search.trial_config({}).optim.epochs


def test_lora_configuration_follows_from_the_fusion_strategy() -> None:
    assert lora_config("early") == "shared"
    assert lora_config("late_weighted") == lora_config("late_head") == "separate"
    # The strategy fixes the adapters, so no sampled trial can pair a strategy with other adapters.
    assert STRATEGIES["early"].adapters == ("shared",)
    assert STRATEGIES["late_head"].adapters == ("text", "audio")


def _space(**space) -> TuneSpace:
    return build_config(TuneSpace, {"base": "train/cpu", "space": space})


@pytest.mark.parametrize("space, message", [
    ({"model.lora.rank": [4]}, "model.lora.rank: unknown key (model.lora has r, alpha"),
    ({"optim.learning_rate": {"loguniform": [1e-5, 1e-3]}}, "optim.learning_rate: unknown key"),
    ({"model.lora.r.size": [4]}, "model.lora.r is a value, not a section"),
    ({"model.fusion.strategy": ["early", "latest"]}, "model.fusion.strategy: value 'latest' does not fit"),
    ({"model.lora.r": {"uniform": [2, 16]}}, "model.lora.r: Input should be a valid integer"),
    ({"model.lora.dropout": {"uniform": [0.0, 1.5]}}, "model.lora.dropout: value 1.5 does not fit"),
    ({"model.encoder.n_mels": {"randint": [40, 80]}},
     "model.encoder.n_mels: Mel-bin counts come from the feature store"),
])
def test_a_bad_knob_is_refused_naming_its_key(space, message) -> None:
    with pytest.raises(ConfigError) as error:
        plan(_space(**space))
    assert message in str(error.value)


@pytest.mark.parametrize("space, message", [
    ({"run.name": ["a", "b"]}, "run.name: not a search knob"),
    ({"scaling.num_workers": [1, 2]}, "scaling.num_workers: not a search knob"),
    ({"optim.lr": {"uniform": [1e-3, 1e-4]}},
     "space.optim.lr: Value error, uniform: low 0.001 must be below high 0.0001"),
    ({"optim.lr": {"loguniform": [0.0, 1e-3]}}, "loguniform: low 0.0 must be positive"),
    ({"optim.lr": {"uniform": [0, 1], "choice": [1]}}, "give exactly one of choice, uniform"),
    ({"optim.lr": {"normal": [0, 1]}}, "space.optim.lr.normal: unknown key"),
])
def test_a_malformed_space_is_refused_naming_its_key(space, message) -> None:
    with pytest.raises(ConfigError) as error:
        _space(**space)
    assert message in str(error.value)


def test_distributions_become_tune_domains_with_inclusive_integer_ranges() -> None:
    space = _space(**{"model.lora.r": {"randint": [4, 5]}, "optim.lr": {"loguniform": [1e-5, 1e-3]},
                      "model.encoder.pooling": ["mean", "max"]}).space
    import numpy as np

    rng = np.random.default_rng(0)
    draws = {int(space["model.lora.r"].to_tune().sample(random_state=rng)) for _ in range(50)}
    assert draws == {4, 5}
    lrs = [space["optim.lr"].to_tune().sample(random_state=rng) for _ in range(50)]
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs)
    assert set(space["model.encoder.pooling"].to_tune().categories) == {"mean", "max"}


def test_expected_reports_count_every_stage() -> None:
    search = plan(_space(**{"model.fusion.strategy": ["early", "late_head"], "optim.epochs": [1, 4]}))
    assert search.max_reports == 4 * 3
    assert expected_reports(search.trial_config({"model.fusion.strategy": "early", "optim.epochs": 2})) == 2
    assert search.max_model_evals == 4  # ASHA's max_t: validations of the last stage alone
    every = search.trial_config({"model.fusion.strategy": "late_head", "optim.epochs": 5, "optim.eval_every": 2})
    assert expected_reports(every) == 3 * 3  # epochs 2, 4 and the last, per stage


def test_asha_compares_trials_on_whole_model_validations_only() -> None:
    """The rung time unit is model_evals, which only last-stage reports carry: a separate-adapter
    trial's text and audio stages never reach a rung."""
    from atflrec.training.worker import MODEL_EVALS
    from atflrec.tuning.search import METRIC, _scheduler

    search = plan(_space(**{"model.fusion.strategy": ["early", "late_weighted"], "optim.epochs": [1, 3]}))
    asha = _scheduler(search)
    assert (asha._time_attr, asha._max_t, METRIC) == (MODEL_EVALS, 3, "val_auc")
    text_stage = {"val_auc": 0.9, "training_iteration": 5, "stage_index": 0}
    assert MODEL_EVALS not in text_stage and asha.on_trial_result(None, None, text_stage) == "CONTINUE"


def test_the_cli_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"base": "train/cpu", "space": {"model.encoder.pool": ["max"]}}))
    assert main(["tune", "--space", str(space), "--out", str(tmp_path / "out"), "--log-dir", str(tmp_path)]) == 2
    assert "model.encoder.pool: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_the_search_needs_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"model.lora.r": [4, 8]}}))
    assert main(["tune", "--space", str(space), "--num-samples", "2", "--log-dir", str(tmp_path)]) == 2
    assert "train.samples: set the samples directory" in capsys.readouterr().err


def test_a_user_space_names_its_base_and_deepspeed_file_beside_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "ds.json").write_text(find_config("deepspeed/zero3_cpu").read_text())
    (folder / "train.yaml").write_text("deepspeed: {config: ds.json}\n")
    (folder / "space.yaml").write_text(yaml.safe_dump({"base": "train.yaml", "space": {"model.lora.r": [4, 8]}}))
    (folder / "named.yaml").write_text(yaml.safe_dump(
        {"base": "train/cpu", "train": {"deepspeed": {"config": "ds.json"}}, "space": {"model.lora.r": [4]}}))
    monkeypatch.chdir(tmp_path)  # neither file is in the current directory
    assert load_space(folder / "space.yaml").trial_config({}).deepspeed.config == str(folder / "ds.json")
    search = load_space(folder / "named.yaml")
    assert search.space.base == "train/cpu"
    assert search.trial_config({}).deepspeed.config == str(folder / "ds.json")  # train: beside the space
    assert load_space("tune/demo").trial_config({}).deepspeed.config == "deepspeed/zero2_cpu"
