"""The Ray Train worker loop: the local loop's pieces, with DeepSpeed owning step and accumulation.

Per stage of the fusion strategy each worker builds a fresh model (same seed on every rank), loads
what earlier stages trained, wraps it in a DeepSpeed engine over exactly that stage's parameters and
trains on its shard of the ``train`` dataset. After every epoch all ranks score their slice of the
validation rows, rank 0 writes a checkpoint (an artifact: only the trained tensors, gathered under
ZeRO-3, plus ``progress.json``) and every rank reports. A fresh model per stage keeps ZeRO-3 from
re-partitioning a module it already partitioned.

On a restart (a worker died, or ``--resume``) Ray Train hands back the latest checkpoint; training
continues at the next epoch of the stage it was in. Optimizer moments are not checkpointed (they
would need DeepSpeed's pickle-based format), so a resumed stage restarts AdamW's moments.
After the last stage every rank loads the best checkpoint (by validation AUC) into a plain model
and the final splits are scored with it: the reported test metrics are the exported model's.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from atflrec.metrics import evaluate_scores
from atflrec.model.artifact import load_weights, save_artifact
from atflrec.model.fusion import STRATEGIES
from atflrec.model.network import ATFLRecModel
from atflrec.training.distributed_config import TrainConfig
from atflrec.training.local import (
    build_model, compute_loss, fit_audio_normalisation, make_collator, make_optimizer, predict,
)

PROGRESS_FILE = "progress.json"
VAL_SCORES_FILE = "val_scores.json"
FEATURES, VAL = "features", "val"
SCORE = "selection_score"


@dataclass
class Progress:
    """Where a run stands: ``epoch`` epochs of stage ``stage_index`` are done; ``history`` holds
    every epoch's reported metrics (Ray keeps only the best checkpoints' metrics)."""

    stage_index: int = 0
    epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def eval_dataset_name(split: str) -> str:
    return VAL if split == VAL else f"eval_{split}"


# --- data from Ray Data shards -------------------------------------------------------------------

def rows_of(shard: Any) -> list[dict[str, Any]]:
    """Every row of an unsplit dataset shard, in order."""
    return [row for batch in shard.iter_batches(batch_format="pyarrow", batch_size=None) for row in batch.to_pylist()]


def features_of(shard: Any) -> dict[str, np.ndarray]:
    """Item features from the ``features`` dataset (see :func:`atflrec.training.distributed.features_table`)."""
    features = {}
    for batch in shard.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            flat = np.frombuffer(row["features"], dtype=np.float16)
            features[row["item_id"]] = flat.reshape(row["n_frames"], row["n_mels"])
    return features


def train_batches(shard: Any, batch_size: int, seed: int) -> Iterator[list[dict[str, Any]]]:
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                    local_shuffle_buffer_size=max(4 * batch_size, 256), local_shuffle_seed=seed):
        yield batch.to_pylist()


# --- distributed helpers ------------------------------------------------------------------------

def trained_parameters(model: ATFLRecModel) -> list[torch.nn.Parameter]:
    """Every parameter any stage trains: all adapters' LoRA weights, the encoder, the fusion."""
    return [p for n, p in model.named_parameters() if "lora_" in n or n.startswith(("encoder.", "fusion."))]


def gathered(model: ATFLRecModel):
    """Full values of the trained parameters on every rank (ZeRO-3 partitions them; else a no-op)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(trained_parameters(model), modifier_rank=None)


def is_trained_key(key: str) -> bool:
    return "lora_" in key or key.startswith(("encoder.", "fusion."))


def trained_state(model: ATFLRecModel) -> dict[str, torch.Tensor]:
    """CPU copies of the trained tensors (call inside :func:`gathered`)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if is_trained_key(k)}


def load_trained_state(model: ATFLRecModel, state: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if is_trained_key(k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"trained state does not fit the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


def all_mean(values: Sequence[float], device: torch.device) -> float:
    """Mean of ``values`` over every rank's values."""
    import torch.distributed as dist

    total = torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


def sharded_predict(model: ATFLRecModel, rows: Sequence[dict[str, Any]], collator: Any, batch_size: int,
                    rank: int, world: int) -> np.ndarray:
    """P(Yes) of every row, each rank scoring an equal slice (ZeRO-3 needs every rank in every
    forward pass, so the slices are padded to the same length); returned on every rank."""
    import torch.distributed as dist

    if not rows:
        return np.zeros(0)
    per_rank = math.ceil(len(rows) / world)
    padded = list(rows) + [rows[i % len(rows)] for i in range(per_rank * world - len(rows))]
    mine = predict(model, padded[rank * per_rank:(rank + 1) * per_rank], collator, batch_size)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine.tolist())
    return np.concatenate([np.asarray(s) for s in everyone])[: len(rows)]


def score_split(model: ATFLRecModel, rows: Sequence[dict[str, Any]], collator: Any, config: TrainConfig,
                rank: int, world: int) -> tuple[dict[str, float], np.ndarray]:
    scores = sharded_predict(model, rows, collator, config.eval_batch_size, rank, world)
    return evaluate_scores([r["label"] for r in rows], scores, [r["user_id"] for r in rows]), scores


# --- checkpoints ----------------------------------------------------------------------------------

def write_checkpoint(model: ATFLRecModel, directory: Path, progress: Progress, config: TrainConfig,
                     metrics: dict[str, Any], val_rows: Sequence[dict[str, Any]], val_scores: np.ndarray,
                     rank: int) -> None:
    """Rank 0 writes the artifact and progress; every rank takes part in gathering."""
    with gathered(model):
        if rank == 0:
            save_artifact(model, directory, extra={"train": config.model_dump(mode="json"), "metrics": metrics})
            (directory / PROGRESS_FILE).write_text(json.dumps(asdict(progress)) + "\n")
            scores = {r["sample_id"]: float(s) for r, s in zip(val_rows, val_scores)}
            (directory / VAL_SCORES_FILE).write_text(json.dumps(scores) + "\n")


def read_progress(directory: str | Path) -> Progress:
    return Progress(**json.loads((Path(directory) / PROGRESS_FILE).read_text()))


def selection_score(val_auc: float, stage_index: int, n_stages: int) -> float:
    """How checkpoints are ranked (Ray keeps the best by it; the best is exported): validation AUC,
    minus 1 per stage still to train. AUC lies in [0, 1], so a finished model (all stages trained)
    always outranks an unfinished one, and within a stage the better epoch ranks higher. An
    undefined AUC (one class only) counts as 0."""
    return (0.0 if math.isnan(val_auc) else val_auc) - (n_stages - 1 - stage_index)


def best_reported_checkpoint() -> Any | None:
    """The reported checkpoint with the highest :func:`selection_score`, or None."""
    import ray.train

    reported = ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    return max(reported, key=lambda r: r.metrics[SCORE]).checkpoint if reported else None


# --- the loop --------------------------------------------------------------------------------------

def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    import deepspeed
    import ray.data
    import ray.train
    import ray.train.torch

    # Workers read small datasets whole; Ray Data's per-read progress bars and "execution finished"
    # lines would drown the epoch lines.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    config = TrainConfig.model_validate(loop_config["config"])
    ds_config: dict[str, Any] = loop_config["deepspeed"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.scaling.torch_threads())
    device = ray.train.torch.get_device()
    features = features_of(ray.train.get_dataset_shard(FEATURES))
    val_rows = rows_of(ray.train.get_dataset_shard(VAL))
    train_shard = ray.train.get_dataset_shard("train")
    optim = config.optim
    log = print if rank == 0 else (lambda *a, **k: None)

    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32  # halves host memory for big models

    def fresh_model() -> ATFLRecModel:
        model = build_model(config.model, config.seed, device, dtype)
        fit_audio_normalisation(model, loop_config["train_items"], features)
        return model

    restored = ray.train.get_checkpoint()
    progress = Progress()
    resumed_from: dict[str, int] | None = None  # where this attempt started, when from a checkpoint
    carried: dict[str, torch.Tensor] | None = None  # trained tensors handed from stage to stage
    if restored is not None:
        with restored.as_directory() as directory:
            progress = read_progress(directory)
            model = fresh_model()
            load_weights(model, directory)
            carried = trained_state(model)
        resumed_from = {"stage_index": progress.stage_index, "epoch": progress.epoch, "global_step": progress.global_step}
        log(f"resuming at stage {progress.stage_index}, epoch {progress.epoch}, step {progress.global_step}")

    stages = STRATEGIES[config.model.fusion.strategy].stages()
    for index, stage in enumerate(stages):
        first_epoch = progress.epoch if index == progress.stage_index else 0
        if index < progress.stage_index or first_epoch >= optim.epochs:
            continue
        model = fresh_model()
        if carried is not None:
            load_trained_state(model, carried)
        collator = make_collator(model, features)
        optimizer = make_optimizer(model, stage, optim)  # also sets which parameters train
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        precision = "fp32"  # DeepSpeed's bf16 casts the module itself; no autocast on top
        for epoch in range(first_epoch, optim.epochs):
            engine.train()
            losses, seen, start = [], 0, time.perf_counter()
            for rows in train_batches(train_shard, optim.batch_size, seed=config.seed + 1000 * index + epoch):
                batch = collator(rows).to(device)
                loss = compute_loss(engine, batch, stage, precision, device)
                boundary = engine.is_gradient_accumulation_boundary()
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
                seen += len(rows)
                progress.global_step += int(boundary)
            elapsed = time.perf_counter() - start
            val_metrics, val_scores = score_split(model, val_rows, collator, config, rank, world)
            progress.stage_index, progress.epoch = index, epoch + 1
            metrics = {
                "stage": stage.name, "stage_index": index, "epoch": epoch + 1, "global_step": progress.global_step,
                "train_loss": all_mean(losses, device), "samples_per_s": all_mean([seen / elapsed], device) * world,
                **{f"val_{k}": v for k, v in val_metrics.items()},
                SCORE: selection_score(val_metrics["auc"], index, len(stages)),
            }
            progress.history.append(metrics)
            log(f"[{stage.name} {epoch + 1}/{optim.epochs}] step {progress.global_step}: "
                f"loss {metrics['train_loss']:.4f}, val AUC {metrics['val_auc']:.4f}, "
                f"{metrics['samples_per_s']:.2f} samples/s", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                write_checkpoint(model, Path(tmp), progress, config, metrics, val_rows, val_scores, rank)
                checkpoint = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
                ray.train.report(metrics, checkpoint=checkpoint,
                                 checkpoint_dir_name=f"checkpoint-{index}-{stage.name}-epoch{epoch + 1:03d}")
        with gathered(model):
            carried = trained_state(model)
        engine.destroy()
        del engine, model, optimizer
    final = final_evaluation(config, loop_config, features, fresh_model, rank, world)
    return None if final is None else {**final, "history": progress.history, "resumed_from": resumed_from}


def final_evaluation(config: TrainConfig, loop_config: dict[str, Any], features: dict[str, np.ndarray],
                     fresh_model: Any, rank: int, world: int) -> dict[str, Any] | None:
    """Score the final splits with the best checkpoint loaded into a plain model (no DeepSpeed)."""
    import ray.train

    best = best_reported_checkpoint()
    model = fresh_model()
    if best is not None:
        with best.as_directory() as directory:
            load_weights(model, directory)
    model.eval()
    collator = make_collator(model, features)
    metrics = {}
    for split in loop_config["final_splits"]:
        rows = rows_of(ray.train.get_dataset_shard(eval_dataset_name(split)))
        metrics[split] = score_split(model, rows, collator, config, rank, world)[0]
        if rank == 0:
            print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()), flush=True)
    if rank != 0:
        return None
    return {"metrics": metrics, "best_checkpoint": best.path if best is not None else None}
