"""Every YAML file the project ships is loaded and validated here, so none of them rots."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from atflrec.config import load_config, read_yaml
from atflrec.data.microlens import MicroLensImportConfig
from atflrec.data.synth import SynthConfig
from atflrec.demo import DemoConfig
from atflrec.evaluation import EvalConfig
from atflrec.features.pipeline import FeatureConfig
from atflrec.training.distributed_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "runs", "node_modules", ".pytest_cache"}

# Which config model each shipped YAML file is, by its path relative to the repo root.
MODELS: dict[str, type[BaseModel]] = {
    "configs/demo.yaml": DemoConfig,
    "configs/data/synth_bench_2000.yaml": SynthConfig,
    "configs/data/synth_v1.yaml": SynthConfig,
    "configs/data/microlens.yaml": MicroLensImportConfig,
    "configs/features/default.yaml": FeatureConfig,
    "configs/eval/default.yaml": EvalConfig,
    "configs/eval/quick.yaml": EvalConfig,
    "configs/train/cpu.yaml": TrainConfig,
    "configs/train/gpu_small_zero2.yaml": TrainConfig,
    "configs/train/gpu_7b_zero3.yaml": TrainConfig,
    # written by `atflrec evaluate` beside the committed report; no command line on top
    "bench/results/eval/config.yaml": EvalConfig,
}
RUN_RECORDS = ("bench/results/",)
# Folders whose YAML files are not stage configs and are checked by a test of their own.
OWN_TESTS = {"cluster/": "tests/cluster/test_manifests.py", "serve/": "tests/serving/test_configs.py",
             "tune_spaces/": "tests/tuning/test_space.py"}


def shipped_yaml_files() -> list[str]:
    files = []
    for path in ROOT.rglob("*.y*ml"):
        parts = set(path.relative_to(ROOT).parts)
        if path.suffix in {".yaml", ".yml"} and not parts & SKIP_DIRS:
            files.append(str(path.relative_to(ROOT)))
    return sorted(files)


def test_every_shipped_yaml_has_a_loader() -> None:
    unclaimed = sorted(f for f in set(shipped_yaml_files()) - set(MODELS) if not f.startswith(tuple(OWN_TESTS)))
    assert not unclaimed, f"add these shipped YAML files to MODELS so a test loads them: {unclaimed}"


@pytest.mark.parametrize("relative", sorted(MODELS))
def test_shipped_yaml_loads(relative: str) -> None:
    path = ROOT / relative
    assert path.is_file(), f"{relative} is listed but missing"
    first_line = path.read_text().splitlines()[0]
    if not relative.startswith(RUN_RECORDS):
        assert first_line.startswith("# atflrec "), f"{relative} must open with the command that uses it"
    load_config(MODELS[relative], path)


def test_the_v1_config_is_generator_version_1s_world() -> None:
    assert load_config(SynthConfig, ROOT / "configs/data/synth_v1.yaml") == SynthConfig.version_1()


def test_demo_yaml_spells_out_the_defaults() -> None:
    assert load_config(DemoConfig, ROOT / "configs/demo.yaml") == DemoConfig()
    assert set(read_yaml(ROOT / "configs/demo.yaml")) == set(DemoConfig.model_fields)
