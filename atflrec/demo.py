"""``atflrec demo``: the whole pipeline on the built-in benchmark data and base model.

Each stage is the same function its own CLI verb calls; the demo only chains them with
demo-sized presets (``configs/demo.yaml`` spells the defaults out) and prints where everything went.
"""

from __future__ import annotations

import shutil
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
from atflrec.samples import SampleConfig


class DemoConfig(StrictModel):
    """What ``atflrec demo`` runs; every stage's config nests under its own key."""

    workdir: str = Field("runs/demo", description="directory for all demo outputs (created)")
    base_model: str = Field(DEFAULT_MODEL, description="built-in model name, local HF model dir or hub id")
    synth: SynthConfig = Field(default_factory=SynthConfig, description="benchmark data generator settings")
    features: FeatureConfig = Field(default_factory=FeatureConfig, description="feature-store settings")
    samples: SampleConfig = Field(default_factory=SampleConfig, description="instruction samples and splits")
    train_config: str = Field(
        "configs/train/cpu.yaml",
        description="training config (Ray Train + DeepSpeed); the demo points it at its data, base model and workdir",
    )
    train_overrides: list[str] = Field(default_factory=list, description="key=value overrides of the training config")
    tune_space: str = Field(
        "tune_spaces/demo.yaml",
        description="search space (Ray Tune); the demo points it at its samples, features and base model",
    )
    tune_overrides: list[str] = Field(default_factory=list, description="key=value overrides of the search space")
    eval_config: str = Field(
        "configs/eval/quick.yaml",
        description="evaluation config (baselines, ATFLRec); the demo points it at its samples, features and base model",
    )
    eval_overrides: list[str] = Field(default_factory=list, description="key=value overrides of the evaluation config")
    serve_port: int = Field(8000, ge=1, le=65535, description="port on 127.0.0.1 where the demo serves the search's best model")


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"\n== {name} ==", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    print(f"-- {name}: {timings[name]:.1f} s", flush=True)


def run_demo(config: DemoConfig) -> dict[str, Path]:
    """Run every stage in order; returns the outputs by name."""
    from atflrec.base_model.fetch import resolve_base_model
    from atflrec.config import load_config
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import generate
    from atflrec.data.validate import validate_dataset
    from atflrec.evaluation import EvalConfig, run_evaluation
    from atflrec.features.pipeline import build_feature_store
    from atflrec.samples import make_samples
    from atflrec.serving.demo import serve_and_query
    from atflrec.training.distributed import train
    from atflrec.training.distributed_config import TrainConfig
    from atflrec.tuning.search import run_search

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

    with _stage("samples", timings):
        outputs["samples"] = workdir / "samples"
        counts = make_samples(load_dataset(outputs["dataset"]), outputs["samples"], config.samples)
        print(", ".join(f"{split} {n}" for split, n in counts.items()) + " samples")

    with _stage("train", timings):
        outputs["model"] = workdir / "model"
        shutil.rmtree(workdir / "train", ignore_errors=True)  # the demo owns its workdir: a fresh run each time
        train_config = load_config(TrainConfig, config.train_config, [
            f"model.base_model={config.base_model}", f"samples={outputs['samples']}",
            f"features={outputs['features']}", f"run.storage_path={workdir / 'train'}", "run.name=demo",
            f"out={outputs['model']}", *config.train_overrides,
        ])
        outcome = train(train_config)
        for split, metrics in outcome.metrics.items():
            print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        print(f"best checkpoint exported to {outcome.exported}")

    with _stage("tune", timings):
        shutil.rmtree(workdir / "tune", ignore_errors=True)  # a fresh search each time, like train
        outputs["best"] = run_search(config.tune_space, workdir / "tune", overrides=[
            f"train.samples={outputs['samples']}", f"train.features={outputs['features']}",
            f"train.model.base_model={config.base_model}", *config.tune_overrides,
        ])

    with _stage("evaluate", timings):
        shutil.rmtree(workdir / "eval", ignore_errors=True)
        eval_overrides = [f"samples={outputs['samples']}", f"features={outputs['features']}",
                          f"data={outputs['dataset']}", f"llm.model.base_model={config.base_model}",
                          *config.eval_overrides]
        outputs["report"] = run_evaluation(
            load_config(EvalConfig, config.eval_config, eval_overrides), workdir / "eval",
            command=f"atflrec evaluate --config {config.eval_config} --out {workdir / 'eval'} " + " ".join(eval_overrides))

    with _stage("serve", timings):
        # Deploys best/ with Ray Serve, asks POST /v1/recommend once over HTTP, then deletes the app.
        serve_and_query(outputs["best"], outputs["dataset"], str(outputs["features"]), port=config.serve_port,
                        items_dir=workdir / "serve-items")

    print("\n== summary ==")
    for name, seconds in timings.items():
        print(f"  {name:<16} {seconds:7.1f} s")
    for name, path in outputs.items():
        print(f"  {name:<16} {path}")
    return outputs
