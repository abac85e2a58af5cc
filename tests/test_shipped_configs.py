"""Every config the project ships is loaded and validated here, so none of them rots."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from atflrec.config import find_config, load_config, packaged_configs, read_yaml
from atflrec.data.microlens import MicroLensImportConfig
from atflrec.data.synth import SynthConfig
from atflrec.demo import DemoConfig
from atflrec.evaluation import EvalConfig
from atflrec.features.pipeline import FeatureConfig
from atflrec.training.deepspeed_config import resolve_deepspeed_config
from atflrec.training.distributed_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "runs", "node_modules", ".pytest_cache"}

# Which config model each shipped config is, by name (``atflrec configs list``).
MODELS: dict[str, type[BaseModel]] = {
    "demo": DemoConfig,
    "data/synth_bench_2000": SynthConfig,
    "data/synth_v1": SynthConfig,
    "data/microlens": MicroLensImportConfig,
    "features/default": FeatureConfig,
    "eval/default": EvalConfig,
    "eval/quick": EvalConfig,
    "train/cpu": TrainConfig,
    "train/gpu_small_zero2": TrainConfig,
    "train/gpu_7b_zero3": TrainConfig,
}
# Shipped configs checked by tests of their own.
OWN_TESTS = {"tune/": "tests/tuning/test_space.py", "deepspeed/": "test_every_deepspeed_config_resolves (below)"}
# YAML files of this repository outside the package: run records, and folders with tests of their own.
RUN_RECORDS = {  # each written by `atflrec evaluate` beside its report
    str(path.relative_to(ROOT)): EvalConfig for path in sorted((ROOT / "bench/results").rglob("config.yaml"))}
REPO_OWN_TESTS = {"cluster/": "tests/cluster/test_manifests.py", "serve/": "tests/serving/test_configs.py"}


def repo_yaml_files() -> list[str]:
    """YAML files of the repository outside the package."""
    files = []
    for path in ROOT.rglob("*.y*ml"):
        parts = path.relative_to(ROOT).parts
        if path.suffix in {".yaml", ".yml"} and not set(parts) & SKIP_DIRS and parts[0] != "atflrec":
            files.append(str(path.relative_to(ROOT)))
    return sorted(files)


def test_every_shipped_config_has_a_loader() -> None:
    unclaimed = sorted(name for name in set(packaged_configs()) - set(MODELS) if not name.startswith(tuple(OWN_TESTS)))
    assert not unclaimed, f"add these shipped configs to MODELS so a test loads them: {unclaimed}"
    unclaimed = sorted(f for f in set(repo_yaml_files()) - set(RUN_RECORDS) if not f.startswith(tuple(REPO_OWN_TESTS)))
    assert not unclaimed, f"YAML files outside atflrec/configs that no test loads: {unclaimed}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_config_loads_by_name_and_opens_with_its_command(name: str) -> None:
    first_line = find_config(name).read_text().splitlines()[0]
    assert first_line.startswith("# atflrec "), f"{name} must open with the command that uses it"
    assert f"--config {name} " in first_line + " ", f"{name}: its command must name it as --config {name}"
    load_config(MODELS[name], name)


@pytest.mark.parametrize("relative", sorted(RUN_RECORDS))
def test_run_records_load(relative: str) -> None:
    load_config(RUN_RECORDS[relative], ROOT / relative)


@pytest.mark.parametrize("name", [n for n in packaged_configs() if n.startswith("deepspeed/")])
def test_every_deepspeed_config_resolves(name: str) -> None:
    config = resolve_deepspeed_config(name, {}, batch_size=4, grad_accum=2, max_grad_norm=1.0, bf16="bf16" in name)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (4, 2)


def test_the_v1_config_is_generator_version_1s_world() -> None:
    assert load_config(SynthConfig, "data/synth_v1") == SynthConfig.version_1()


def test_demo_config_spells_out_the_defaults() -> None:
    assert load_config(DemoConfig, "demo") == DemoConfig()
    assert set(read_yaml(find_config("demo"))) == set(DemoConfig.model_fields)
