"""``atflrec demo``: the whole pipeline on the built-in benchmark data and base model.

Each stage is the same function its own CLI verb calls; the demo only chains them with
demo-sized presets (``configs/demo.yaml`` spells the defaults out) and prints where everything went.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import Field

from atflrec.config import StrictModel, dump_config
from atflrec.data.synth import SynthConfig
from atflrec.errors import UserError
from atflrec.features.pipeline import FeatureConfig
from atflrec.base_model.fetch import DEFAULT_MODEL


class DemoConfig(StrictModel):
    """What ``atflrec demo`` runs; every stage's config nests under its own key."""

    workdir: str = Field("runs/demo", description="directory for all demo outputs (created)")
    base_model: str = Field(DEFAULT_MODEL, description="built-in model name, local HF model dir or hub id")
    synth: SynthConfig = Field(default_factory=SynthConfig, description="benchmark data generator settings")
    features: FeatureConfig = Field(default_factory=FeatureConfig, description="feature-store settings")


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"\n== {name} ==", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    print(f"-- {name}: {timings[name]:.1f} s", flush=True)


def run_demo(config: DemoConfig) -> dict[str, Path]:
    """Run every stage in order; returns the outputs by name."""
    from atflrec.data.synth import generate
    from atflrec.data.validate import validate_dataset
    from atflrec.features.pipeline import build_feature_store
    from atflrec.base_model.fetch import resolve_base_model

    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "demo_config.yaml").write_text(dump_config(config))
    outputs: dict[str, Path] = {"config": workdir / "demo_config.yaml"}
    timings: dict[str, float] = {}

    with _stage("benchmark data", timings):
        outputs["dataset"] = workdir / "dataset"
        print(generate(config.synth, outputs["dataset"]).describe())

    with _stage("validate", timings):
        report = validate_dataset(outputs["dataset"])
        print(report.describe())
        if not report.usable:
            raise UserError(f"the generated dataset at {outputs['dataset']} is not usable")

    with _stage("features", timings):
        outputs["features"] = workdir / "features"
        print(build_feature_store(outputs["dataset"], str(outputs["features"]), config.features).describe())

    with _stage("base model", timings):
        outputs["base_model"] = Path(resolve_base_model(config.base_model))
        print(f"base model ready at {outputs['base_model']}")

    print("\n== summary ==")
    for name, seconds in timings.items():
        print(f"  {name:<16} {seconds:7.1f} s")
    for name, path in outputs.items():
        print(f"  {name:<16} {path}")
    return outputs
