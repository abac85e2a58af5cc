"""``atflrec demo``: the whole pipeline on the built-in benchmark data and base model.

Each stage is the same function its own CLI verb calls; the demo only chains them with
demo-sized presets (the shipped ``demo`` config spells the defaults out) and prints where everything went.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field

from atflrec.base_model.fetch import DEFAULT_MODEL
from atflrec.config import ConfigRef, StrictModel, dump_config
from atflrec.console import say
from atflrec.data.synth import SynthConfig
from atflrec.errors import UserError
from atflrec.features.pipeline import FeatureConfig
from atflrec.samples import SampleConfig
from atflrec.tracking import TrackingConfig


class DemoConfig(StrictModel):
    """What ``atflrec demo`` runs; every stage's config nests under its own key."""

    workdir: str = Field("runs/demo", description="directory for all demo outputs (created)")
    base_model: str = Field(DEFAULT_MODEL, description="built-in model name, local HF model dir or hub id")
    synth: SynthConfig = Field(default_factory=SynthConfig, description="benchmark data generator settings")
    features: FeatureConfig = Field(default_factory=FeatureConfig, description="feature-store settings")
    samples: SampleConfig = Field(default_factory=SampleConfig, description="instruction samples and splits")
    train_config: ConfigRef = Field(
        "train/cpu",
        description="training config (Ray Train + DeepSpeed); the demo points it at its data, base model and workdir",
    )
    train_overrides: list[str] = Field(default_factory=list, description="key=value overrides of the training config")
    tune_space: ConfigRef = Field(
        "tune/demo",
        description="search space (Ray Tune); the demo points it at its samples, features and base model",
    )
    tune_overrides: list[str] = Field(default_factory=list, description="key=value overrides of the search space")
    eval_config: ConfigRef = Field(
        "eval/quick",
        description="evaluation config (baselines, ATFLRec); the demo points it at its samples, features and "
                    "base model",
    )
    eval_overrides: list[str] = Field(default_factory=list, description="key=value overrides of the evaluation config")
    serve_port: int = Field(
        8000, ge=1, le=65535, description="port on 127.0.0.1 where the demo serves the search's best model")
    keep_serving: bool = Field(
        False, description="leave the endpoint up at the end (Ctrl-C stops it) and print curl lines")
    spot_check_rows: int = Field(
        48, ge=2, description="cold-start rows on which the served model is scored beside user_rate and popularity")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="record train, tune and evaluate in MLflow (off; uri unset: a local store in WORKDIR/mlruns)")


def tracking_uri(tracking: TrackingConfig, workdir: Path) -> str | None:
    """Where every stage of the demo records its runs when tracking is on (by default a local MLflow
    store in ``WORKDIR/mlruns``); None when it is off."""
    if not tracking.enabled:
        return None
    from atflrec.tracking import require_mlflow, resolve_uri

    require_mlflow()  # before minutes of work, not at the train stage
    return resolve_uri(tracking.uri or str(workdir / "mlruns"))


def tracking_note(uri: str, experiment: str) -> str:
    """The demo's last word on tracking: where the runs are and the command that opens MLflow's UI on them."""
    from atflrec.tracking import ui_command

    return (f"\ntrain, tune and evaluate are recorded in MLflow (experiment {experiment!r}); browse them with:\n"
            f"  {ui_command(uri)}")


def check_port_free(port: int) -> None:
    """Fail before any work when the demo could not serve at the end (it takes minutes to get there)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise UserError(f"port {port} on 127.0.0.1 is in use, and the demo serves its model there at the end: "
                            f"free it, or choose another port with serve_port=PORT "
                            f"(e.g. serve_port={port + 1})") from None


def spot_check(best: Path, dataset: Path, features: str, samples: Path, rows: int, items_dir: Path) -> dict[str, float]:
    """Cold-start AUC of the served model (through the serving scorer) beside ``user_rate`` and
    ``popularity`` on the same seeded cold-start rows: is the model any better than the floor?"""
    import numpy as np

    from atflrec.baselines import Context, build_recommender
    from atflrec.metrics import auc
    from atflrec.model.artifact import read_meta
    from atflrec.model.prefix import Query
    from atflrec.samples import few_shot, read_samples
    from atflrec.serving.catalogue import Catalogue
    from atflrec.serving.scorer import ServedModel, audio_mels

    table = read_samples(samples, "cold")
    cold = (few_shot(table, rows, seed=0) if table.num_rows > rows else table).to_pylist()
    labels = [r["label"] for r in cold]
    mels = audio_mels(read_meta(best))
    catalogue = Catalogue.load(str(dataset), features, [mels] if mels else [], str(items_dir))
    served = ServedModel.load("best", str(best), catalogue)
    history_keys = ("liked_ids", "liked_titles", "disliked_ids", "disliked_titles")
    queries = [Query({k: r[k] for k in history_keys}, [(r["item_id"], r["title"])]) for r in cold]
    result = {"rows": float(len(cold)), "served model": auc(labels, np.concatenate(served.score(queries, 32)))}
    train = read_samples(samples, "train").to_pylist()
    for kind in ("user_rate", "popularity"):
        baseline = build_recommender(kind)
        baseline.fit(train, Context(items={}))
        result[kind] = auc(labels, baseline.score(cold))
    return result


def curl_lines(url: str, history: list[dict], candidates: list[str]) -> list[str]:
    """Ready-to-paste requests for every route of the live endpoint."""
    body = json.dumps({"history": history, "k": 5})
    score = json.dumps({"history": history, "candidates": candidates})
    post = "curl -s -X POST -H 'content-type: application/json'"
    return [f"curl -s {url}healthz", f"curl -s {url}v1/model",
            f"{post} {url}v1/recommend -d {shlex.quote(body)}", f"{post} {url}v1/score -d {shlex.quote(score)}",
            # the body goes through stdin: a clip's base64 is longer than one shell argument may be
            """{ printf '{"item_id": "my-song", "title": "My Song", "tags": ["rock"], "audio": "'; """
            f"""base64 -w0 my-song.wav; printf '"}}'; }} | {post} {url}v1/items --data-binary @-"""
            "   # a cold-start item from your own WAV file",
            f"open {url}docs for the OpenAPI page"]


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    say(f"\n== {name} ==")
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    say(f"-- {name}: {timings[name]:.1f} s")


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

    check_port_free(config.serve_port)
    workdir = Path(config.workdir)
    uri = tracking_uri(config.tracking, workdir)
    tracking = [] if uri is None else [
        "tracking.enabled=true", f"tracking.uri={uri}", f"tracking.experiment={config.tracking.experiment}"]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "demo_config.yaml").write_text(dump_config(config))
    outputs: dict[str, Path] = {"config": workdir / "demo_config.yaml"}
    timings: dict[str, float] = {}

    with _stage("benchmark data", timings):
        outputs["dataset"] = workdir / "dataset"
        say(generate(config.synth, outputs["dataset"]).describe())

    with _stage("validate", timings):
        report = validate_dataset(outputs["dataset"])
        say(report.describe())
        if not report.usable:
            raise UserError(f"the generated dataset at {outputs['dataset']} is not usable")

    with _stage("features", timings):
        outputs["features"] = workdir / "features"
        say(build_feature_store(outputs["dataset"], str(outputs["features"]), config.features).describe())

    with _stage("base model", timings):
        outputs["base_model"] = Path(resolve_base_model(config.base_model))
        say(f"base model ready at {outputs['base_model']}")

    with _stage("samples", timings):
        outputs["samples"] = workdir / "samples"
        counts = make_samples(load_dataset(outputs["dataset"]), outputs["samples"], config.samples)
        say(", ".join(f"{split} {n}" for split, n in counts.items()) + " samples")

    with _stage("train", timings):
        outputs["model"] = workdir / "model"
        shutil.rmtree(workdir / "train", ignore_errors=True)  # the demo owns its workdir: a fresh run each time
        train_config = load_config(TrainConfig, config.train_config, [
            f"model.base_model={config.base_model}", f"samples={outputs['samples']}",
            f"features={outputs['features']}", f"run.storage_path={workdir / 'train'}", "run.name=demo",
            f"out={outputs['model']}", *tracking, *config.train_overrides,
        ])
        outcome = train(train_config)
        for split, metrics in outcome.metrics.items():
            say(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        say(f"best checkpoint exported to {outcome.exported}")

    with _stage("tune", timings):
        shutil.rmtree(workdir / "tune", ignore_errors=True)  # a fresh search each time, like train
        outputs["best"] = Path(run_search(config.tune_space, workdir / "tune", overrides=[
            f"train.samples={outputs['samples']}", f"train.features={outputs['features']}",
            f"train.model.base_model={config.base_model}", *tracking, *config.tune_overrides,
        ]))

    with _stage("evaluate", timings):
        shutil.rmtree(workdir / "eval", ignore_errors=True)
        eval_overrides = [f"samples={outputs['samples']}", f"features={outputs['features']}",
                          f"data={outputs['dataset']}", f"llm.model.base_model={config.base_model}",
                          *tracking, *config.eval_overrides]
        outputs["report"] = run_evaluation(
            load_config(EvalConfig, config.eval_config, eval_overrides), workdir / "eval",
            command=f"atflrec evaluate --config {config.eval_config} --out {workdir / 'eval'} "
                    + " ".join(eval_overrides))

    with _stage("served model vs the floor", timings):
        check = spot_check(outputs["best"], outputs["dataset"], str(outputs["features"]), outputs["samples"],
                           config.spot_check_rows, workdir / "spot-check-items")
        say(f"cold-start AUC on {int(check.pop('rows'))} seeded cold-start rows: "
            + ", ".join(f"{name} {value:.3f}" for name, value in check.items())
            + "  (the demo's few-shot search is a smoke run: see bench/results/eval for the evaluation)")

    with _stage("serve", timings):
        # Deploys best/ with Ray Serve and asks POST /v1/recommend once over HTTP; the app is deleted
        # afterwards unless keep_serving.
        served = serve_and_query(outputs["best"], outputs["dataset"], str(outputs["features"]), port=config.serve_port,
                                 items_dir=workdir / "serve-items", keep_running=config.keep_serving)

    say("\n== summary ==")
    width = max(map(len, [*timings, *outputs]))
    for name, seconds in timings.items():
        say(f"  {name:<{width}} {seconds:7.1f} s")
    for name, path in outputs.items():
        say(f"  {name:<{width}} {path}")
    if uri is not None:
        say(tracking_note(uri, config.tracking.experiment))
    if config.keep_serving:
        from atflrec.serving.config import APP_NAME
        from atflrec.serving.launch import serve_until_interrupted

        history = served["request"]["history"]
        say(f"\nthe endpoint stays up at {served['url']} (Ctrl-C stops it); try:")
        for line in curl_lines(served["url"], history, [i["item_id"] for i in served["response"]["items"][:2]]):
            say(f"  {line}")
        serve_until_interrupted(APP_NAME)
    else:
        say("\nto keep the endpoint up at the end, run `atflrec demo --keep-serving`")
    return outputs
