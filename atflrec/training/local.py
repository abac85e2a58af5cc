"""Single-process training and evaluation (no Ray): a run's pieces, around the one stage loop.

Reusable pieces, in the order a run uses them: ``prepare_run`` (few-shot draw, ``load_item_features``,
``build_model``, ``fit_audio_normalisation``, ``make_collator``) → ``train_run`` (per stage of the
fusion strategy, :class:`~atflrec.training.loop.StageLoop` with validation on the ``val`` split
when the run scores it) → ``evaluate_run`` → ``save_artifact``. ``train_local`` chains them.
A Ray Train worker runs the same ``StageLoop`` (:mod:`atflrec.training.worker`), with DeepSpeed's
engine plugged into its backward and step; per-stage trainable parameters come from
``ATFLRecModel.configure_stage``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from atflrec.config import ConfigError
from atflrec.console import say
from atflrec.metrics import evaluate_scores
from atflrec.model.artifact import save_artifact
from atflrec.model.batch import Collator
from atflrec.model.fusion import Stage, stage_rows
from atflrec.model.network import ATFLRecModel, ModelConfig
from atflrec.samples import SAMPLE_SCHEMA, few_shot, read_samples
from atflrec.tracking import tracked
from atflrec.training.loop import (  # noqa: F401  (re-exported: callers import them from here)
    OptimConfig,
    StageLoop,
    autocast,
    compute_loss,
    make_batches,
    predict,
)
from atflrec.training.settings import TrainingSettings


class LocalTrainConfig(TrainingSettings):
    """``atflrec train-local``: one model trained and evaluated in this process."""

    device: str = Field("auto", description="torch device; auto picks cuda when available")
    out: str | None = Field(None, description="artifact directory to write (unset: none)")


@dataclass
class TrainResult:
    losses: dict[str, list[float]] = field(default_factory=dict)  # per stage, per optimizer step
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # per eval split
    samples_per_s: dict[str, float] = field(default_factory=dict)  # per stage
    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per stage, per validation
    artifact: str | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: ModelConfig, seed: int = 0, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, zero3_config: dict[str, Any] | None = None) -> ATFLRecModel:
    """Base model (in ``dtype``) + fresh adapters, encoder and fusion (initialised from ``seed``).
    With ``zero3_config`` the base model is built partitioned (see
    :func:`~atflrec.base_model.fetch.load_base_model`); the rest stays whole until DeepSpeed's
    engine partitions it, so trained tensors load into it as into a plain model."""
    from atflrec.base_model.fetch import load_base_model

    base, tokenizer = load_base_model(config.base_model, dtype=dtype, zero3_config=zero3_config)
    torch.manual_seed(seed)
    return ATFLRecModel(config, base, tokenizer).to(device)


def cited_item_ids(tables: Sequence[pa.Table]) -> list[str]:
    """Every item the samples cite, as target or in a history (sorted)."""
    ids: set[str] = set()
    for table in tables:
        ids.update(table.column("item_id").to_pylist())
        for column in ("liked_ids", "disliked_ids"):
            for row in table.column(column).to_pylist():
                ids.update(row)
    return sorted(ids)


def load_item_features(store: str | None, n_mels: int, tables: Sequence[pa.Table]) -> dict[str, np.ndarray]:
    """Features of every item the samples cite (targets and histories); ``{}`` without a store."""
    if store is None:
        return {}
    from atflrec.features.store import load_features

    return load_features(store, n_mels, cited_item_ids(tables))


def fit_audio_normalisation(model: ATFLRecModel, item_ids: Sequence[str], features: dict[str, np.ndarray]) -> None:
    """Fit the encoder's per-bin normalisation on the audio of ``item_ids`` (those the training rows cite)."""
    clips = [features[i] for i in item_ids if i in features]
    if clips:
        model.encoder.fit_normalisation(clips)


def make_collator(model: ATFLRecModel, features: dict[str, np.ndarray]) -> Collator:
    enc = model.config.encoder
    return Collator(model.tokenizer, model.config.prompt, model.prompt_kinds, enc.tokens_per_item, enc.n_mels, features)


def train_stage(model: ATFLRecModel, stage: Stage, rows: Sequence[dict[str, Any]], collator: Collator,
                optim: OptimConfig, precision: str = "fp32", seed: int = 0,
                stage_index: int = 0) -> tuple[list[float], float]:
    """Train one stage with :class:`~atflrec.training.loop.StageLoop`, without validation; returns the
    mean loss of each optimizer step and samples/s."""
    result = StageLoop(model, stage, rows, collator, optim, seed=seed, stage_index=stage_index,
                       precision=precision).run()
    return result.losses, result.samples_per_s


def evaluate(model: torch.nn.Module, rows: Sequence[dict[str, Any]], collator: Collator, batch_size: int,
             precision: str = "fp32") -> dict[str, float]:
    """AUC, GAUC and log loss of the full model on ``rows``."""
    scores = predict(model, rows, collator, batch_size, precision)
    return evaluate_scores([r["label"] for r in rows], scores, [r["user_id"] for r in rows])


def load_train_table(config: TrainingSettings) -> pa.Table:
    """The training samples, drawn down to ``shots`` with the run's seed."""
    if config.samples is None:
        raise ConfigError("samples: set the samples directory (e.g. samples=runs/samples)")
    train = read_samples(config.samples, "train")
    return train if config.shots is None else few_shot(train, config.shots, config.seed)


def load_eval_rows(config: TrainingSettings, split: str) -> list[dict[str, Any]]:
    """A split's rows, subsampled with the run's seed when ``max_eval_samples`` asks for it."""
    table = read_samples(config.samples, split)
    if config.max_eval_samples is not None and table.num_rows > config.max_eval_samples:
        table = few_shot(table, config.max_eval_samples, config.seed)
    return table.to_pylist()


@dataclass
class LocalRun:
    """Everything a run trains and evaluates with, built once by :func:`prepare_run`."""

    config: LocalTrainConfig
    model: ATFLRecModel
    collator: Collator
    train_rows: list[dict[str, Any]]
    eval_rows: dict[str, list[dict[str, Any]]]


def prepare_run(config: LocalTrainConfig) -> LocalRun:
    """Few-shot draw, eval rows, audio features, a fresh model with its normalisation fitted."""
    train = load_train_table(config)
    evals = {split: load_eval_rows(config, split) for split in config.eval_splits}
    cited = [train] + [pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA) for rows in evals.values()]
    features = load_item_features(config.features, config.model.encoder.n_mels, cited)
    model = build_model(config.model, config.seed, resolve_device(config.device))
    fit_audio_normalisation(model, cited_item_ids([train]), features)
    return LocalRun(config, model, make_collator(model, features), train.to_pylist(), evals)


def train_run(run: LocalRun, on_record: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train every stage of the run's fusion strategy in order, each validated on ``val`` when the
    run scores it (best epoch kept, early stopping per ``optim.patience``); ``on_record`` hears
    every validation's record."""
    result = TrainResult()
    val = run.eval_rows.get("val") or None
    if val is None:
        say("no validation split among eval_splits: every stage keeps its last epoch, no early stopping")
    for index, stage in enumerate(run.model.fusion.stages()):
        rows = stage_rows(stage, run.config.model.fusion, run.train_rows, val)
        loop = StageLoop(run.model, stage, rows, run.collator, run.config.optim, seed=run.config.seed,
                         stage_index=index, precision=run.config.precision, val_rows=val,
                         eval_batch_size=run.config.eval_batch_size, on_record=on_record)
        stage_result = loop.run()
        losses, speed = stage_result.losses, stage_result.samples_per_s
        result.losses[stage.name], result.samples_per_s[stage.name] = losses, speed
        result.evaluations[stage.name] = stage_result.evaluations
        say(f"stage {stage.name}: loss {losses[0]:.4f} → {losses[-1]:.4f}, {speed:.1f} samples/s")
    run.model.configure_stage(None)
    return result


def evaluate_run(run: LocalRun) -> dict[str, dict[str, float]]:
    """Metrics of the full model on every eval split."""
    metrics = {}
    for split, rows in run.eval_rows.items():
        metrics[split] = evaluate(run.model, rows, run.collator, run.config.eval_batch_size, run.config.precision)
        say(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()))
    return metrics


def train_local(config: LocalTrainConfig) -> TrainResult:
    """Prepare, train every stage, evaluate, and save the artifact when ``out`` is set; with
    ``tracking`` on, all of it is recorded in an MLflow run that the artifact names."""
    name = Path(config.out).name if config.out is not None else "train-local"
    with tracked(config.tracking, kind="train-local", name=name, params=config.model_dump(mode="json")) as tracking:
        log_record = None
        if tracking:
            from atflrec.training import tracking as track

            tracking.set_tags(track.training_tags(config))
            log_record = partial(track.log_record, tracking)
        run = prepare_run(config)
        result = train_run(run, log_record)
        result.metrics = evaluate_run(run)
        if config.out is not None:
            extra = {"train": config.model_dump(mode="json"), "metrics": result.metrics}
            if tracking:
                extra["tracking"] = tracking.ref.as_dict()
            result.artifact = str(save_artifact(run.model, config.out, extra=extra))
            (Path(config.out) / "losses.json").write_text(json.dumps(result.losses) + "\n")
        if tracking:
            track.log_outcome(tracking, result.metrics, result.artifact)
    return result
