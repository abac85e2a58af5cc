"""The Ray Train worker: the one stage loop (:mod:`atflrec.training.loop`) with DeepSpeed's engine in it.

Per stage of the fusion strategy each worker builds a fresh model (same seed on every rank), loads
what earlier stages trained, and runs :class:`DeepSpeedStageLoop`: the local loop's epochs,
accumulation, ``max_steps``, learning-rate schedule, validation and early stopping, with the
engine doing backward and step (the loop tells it where the accumulation boundaries are) and
validation sharded across ranks. At every validation all ranks score their slice of the ``val``
rows, rank 0 writes the artifact (only the trained tensors, gathered under ZeRO-3), the loop state
(``progress.json``) and the stage's best tensors so far (``best.safetensors``), every rank writes
its optimizer shard (``optimizer-rank<r>.safetensors`` + ``.json``; the torch AdamW state inside
DeepSpeed's wrapper, so no pickle), and every rank reports: Ray Train merges the files into one
checkpoint. A fresh model per stage keeps ZeRO-3 from re-partitioning a module it already
partitioned; a finished stage's tensors are freed (:func:`release_stage`), since DeepSpeed keeps
a destroyed engine and its model reachable.

On a restart (a worker died, or ``--resume``) Ray Train hands back the latest checkpoint: the
stage it was in continues at the next epoch with the same weights, best tensors, early-stopping
state and AdamW moments (restored when the world size is the one that wrote them; otherwise they
restart, and the log says so). After the last stage every rank loads the best checkpoint (by
validation score) into a plain model and the final splits are scored with it: the reported test
metrics are the exported model's. Rank 0 of each worker group adds a line to the run's ``worker_groups.jsonl``
as it starts, so a group that was replaced shows even when it had no checkpoint to resume from.

Under ZeRO-3 every model a worker builds has its base built straight into partitions
(``deepspeed.zero.Init`` through transformers, see :func:`~atflrec.base_model.fetch.load_base_model`):
no worker ever holds the whole base model, so a model larger than one worker's memory trains. The
trained parts (adapters, encoder, fusion) are built whole, take their tensors from checkpoints as
in a plain model, and the engine partitions them. The final evaluation's model gets an engine
without an optimizer: its hooks gather each layer for its forward.

What Tune hears: every report carries ``val_auc``, the validation AUC of what the stage trains
(an adapter's own scores in its stage; the whole model's in a fusion stage or a single-stage
strategy). ``model_evals``, ASHA's time unit, is only in reports of the last stage, whose scores
are the whole model's: a separate-adapter trial is compared at a rung only once it is whole.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atflrec.console import say
from atflrec.metrics import evaluate_scores
from atflrec.model.artifact import load_weights, save_artifact
from atflrec.model.batch import Batch
from atflrec.model.fusion import STRATEGIES, Stage, stage_rows
from atflrec.model.network import ATFLRecModel
from atflrec.storage import append_line, join, read_json_lines, uri_of
from atflrec.training.deepspeed_config import zero_stage
from atflrec.training.distributed_config import TrainConfig
from atflrec.training.heap import return_freed_blocks, trim_heap
from atflrec.training.local import build_model, fit_audio_normalisation, make_collator
from atflrec.training.loop import (
    LoopState,
    StageLoop,
    compute_loss,
    predict,
    read_optimizer_state,
    save_optimizer_state,
    selection_value,
)

PROGRESS_FILE = "progress.json"
VAL_SCORES_FILE = "val_scores.json"
BEST_FILE = "best.safetensors"  # the current stage's best trained tensors so far
FEATURES, VAL = "features", "val"
ROW_INDEX = "row_index"  # the train dataset's extra column: each row's place in the training table
SCORE = "selection_score"
MODEL_EVALS = "model_evals"  # ASHA's time unit: validations of the whole model (last stage only)
WORKER_GROUPS_FILE = "worker_groups.jsonl"  # in the run dir: one line per start of a worker group


@dataclass
class Progress(LoopState):
    """The loop state plus ``history`` (every validation's reported metrics; Ray keeps only the best
    checkpoints' metrics) and ``losses`` (every optimizer step's loss, per stage)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)


def eval_dataset_name(split: str) -> str:
    return VAL if split == VAL else f"eval_{split}"


def record_worker_group(run_dir: str, world: int, checkpoint: Any) -> None:
    """Rank 0's line for this worker group's start: when, on which node, how many workers and the
    checkpoint it was handed (None: it starts from the beginning)."""
    import ray

    resumed = uri_of(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else None
    entry = {"started": time.time(), "node_id": ray.get_runtime_context().get_node_id(), "workers": world,
             "checkpoint": resumed}
    append_line(join(run_dir, WORKER_GROUPS_FILE), json.dumps(entry))


def read_worker_groups(run_dir: str) -> list[dict[str, Any]]:
    """The run's worker-group starts, in order: more than one after a lost worker was replaced or a
    stopped run was resumed; ``[]`` before the first."""
    return read_json_lines(join(run_dir, WORKER_GROUPS_FILE))


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


def table_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by their ``row_index`` (see :func:`atflrec.training.distributed.build_datasets`), without it."""
    return [{k: v for k, v in r.items() if k != ROW_INDEX} for r in sorted(rows, key=lambda r: r[ROW_INDEX])]


# --- distributed helpers ------------------------------------------------------------------------

def release_stage(engine: Any, model: ATFLRecModel) -> None:
    """Destroy a stage's engine and free its model's tensors. After ``destroy()`` DeepSpeed (0.19)
    still reaches the engine, its optimizer and the model (ZeRO-3, for one, keeps each engine's
    module on a module-level stack it never pops; ZeRO-2 engines were not freed either), so each
    stage's model lived on until the worker exited, beside the next stage's and the final
    evaluation's: a whole partition more per stage under ZeRO-3 (about 1.9 GB at 1B parameters on
    2 workers), a whole model under ZeRO-2. Emptying the tensors frees that memory whatever holds
    the Python objects; the heap's free pages then go back to the system."""
    engine.destroy()
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            partition = getattr(tensor, "ds_tensor", None)  # a ZeRO-3 parameter's own slice
            if partition is not None:
                partition.data = torch.empty(0, dtype=partition.dtype, device=partition.device)
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    trim_heap()


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
        raise RuntimeError(f"trained state does not fit the model: missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")


def all_mean(values: Sequence[float], device: torch.device) -> float:
    """Mean of ``values`` over every rank's values."""
    import torch.distributed as dist

    total = torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


def sharded_predict(model: ATFLRecModel, rows: Sequence[dict[str, Any]], collator: Any, batch_size: int,
                    rank: int, world: int, stage: Stage | None = None) -> np.ndarray:
    """P(Yes) of every row, each rank scoring an equal slice (ZeRO-3 needs every rank in every
    forward pass, so the slices are padded to the same length); returned on every rank."""
    import torch.distributed as dist

    if not rows:
        return np.zeros(0)
    per_rank = math.ceil(len(rows) / world)
    padded = list(rows) + [rows[i % len(rows)] for i in range(per_rank * world - len(rows))]
    mine = predict(model, padded[rank * per_rank:(rank + 1) * per_rank], collator, batch_size, stage=stage)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine.tolist())
    return np.concatenate([np.asarray(s) for s in everyone])[: len(rows)]


def score_split(model: ATFLRecModel, rows: Sequence[dict[str, Any]], collator: Any, config: TrainConfig,
                rank: int, world: int) -> tuple[dict[str, float], np.ndarray]:
    scores = sharded_predict(model, rows, collator, config.eval_batch_size, rank, world)
    return evaluate_scores([r["label"] for r in rows], scores, [r["user_id"] for r in rows]), scores


# --- checkpoints ----------------------------------------------------------------------------------

def optimizer_file(rank: int) -> str:
    return f"optimizer-rank{rank}"


def read_progress(directory: str | Path) -> Progress:
    return Progress.from_dict(json.loads((Path(directory) / PROGRESS_FILE).read_text()))


def selection_score(value: float | None, stage_index: int, n_stages: int) -> float:
    """How checkpoints are ranked (Ray keeps the best by it; the best is exported): the validation
    score (:func:`~atflrec.training.loop.selection_value`: AUC, or exp(-log loss) where AUC is
    undefined), minus 1 per stage still to train. The score lies in [0, 1], so a finished model
    (all stages trained) always outranks an unfinished one, and within a stage the better epoch
    ranks higher. No score counts as 0."""
    return (0.0 if value is None or math.isnan(value) else value) - (n_stages - 1 - stage_index)


def best_reported_checkpoint() -> Any | None:
    """The reported checkpoint with the highest :func:`selection_score`, or None."""
    import ray.train

    reported = ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    return max(reported, key=lambda r: r.metrics[SCORE]).checkpoint if reported else None


# --- the loop --------------------------------------------------------------------------------------

@dataclass
class Restored:
    """What a worker reads from the checkpoint it restarts from, before its stage's engine exists."""

    progress: Progress
    trained: dict[str, torch.Tensor]  # every trained tensor, as the checkpoint left it
    best: dict[str, torch.Tensor] | None  # the stage's best tensors so far
    optimizer: tuple[dict[str, Any], dict[str, Any]] | None  # this rank's optimizer state and its metadata


class DeepSpeedStageLoop(StageLoop):
    """The stage loop with a DeepSpeed engine doing backward and step, validation sharded across
    ranks, and a checkpoint plus a Ray Train report at every validation."""

    def __init__(self, model: ATFLRecModel, stage: Stage, rows: Sequence[dict[str, Any]], collator: Any,
                 config: TrainConfig, *, ds_config: dict[str, Any], progress: Progress, n_stages: int,
                 val_rows: Sequence[dict[str, Any]], rank: int, world: int, log: Any,
                 tracking: dict[str, str] | None = None) -> None:
        import deepspeed

        super().__init__(model, stage, rows, collator, config.optim, seed=config.seed, stage_index=progress.stage_index,
                         precision="fp32",  # DeepSpeed's bf16 casts the module itself; no autocast on top
                         val_rows=val_rows, eval_batch_size=config.eval_batch_size, state=progress, log=log)
        self.config, self.progress, self.n_stages, self.rank, self.world = config, progress, n_stages, rank, world
        self.tracking = tracking  # the MLflow run every checkpoint names (lineage), or None
        self.all_val_rows = list(val_rows)
        self.trained_names = {n for n, p in model.named_parameters() if p.requires_grad}
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=ds_config)
        self.earlier_losses = list(progress.losses.get(stage.name, []))  # steps before a restart

    def train_mode(self) -> None:
        self.engine.train()

    def forward_loss(self, batch: Batch, boundary: bool) -> torch.Tensor:
        self.engine.set_gradient_accumulation_boundary(boundary)  # the loop's boundaries, epoch tails included
        return compute_loss(self.engine, batch, self.stage, self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # divides by gradient_accumulation_steps, as the local loop does

    def optimizer_step(self) -> None:
        self.engine.step()  # clips (gradient_clipping) and steps: the loop calls it at boundaries only

    def validation_scores(self) -> np.ndarray:
        return sharded_predict(self.model, self.val_rows, self.collator, self.eval_batch_size, self.rank, self.world,
                               self.stage)

    def capture_state(self) -> dict[str, torch.Tensor]:
        with gathered(self.model):
            return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if n in self.trained_names}

    def restore_state(self, state: dict[str, torch.Tensor]) -> None:
        import deepspeed

        params = [p for n, p in self.model.named_parameters() if n in state]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in state:
                    param.copy_(state[name].to(param.device, param.dtype))

    @contextmanager
    def full_param_groups(self) -> Iterator[None]:
        """ZeRO-3 empties the torch optimizer's param groups between steps (its state is keyed by
        the fp32 partitions it puts there for a step); put them back while state is saved or loaded."""
        wrapper = self.engine.optimizer
        if hasattr(wrapper, "_set_fp32_optimizer_param_groups"):
            wrapper._set_fp32_optimizer_param_groups()
            try:
                yield
            finally:
                wrapper._clear_fp32_optimizer_param_groups()
        else:
            yield

    def restore_optimizer(self, saved: tuple[dict[str, Any], dict[str, Any]] | None) -> bool:
        """Load this rank's optimizer state from the checkpoint when it was written for this stage,
        step and world size; returns whether it was."""
        if saved is None:
            self.log("resuming without optimizer state (the checkpoint has none): AdamW's moments restart")
            return False
        state, meta = saved
        expected = {"world_size": self.world, "stage_index": self.progress.stage_index, "step": self.progress.step}
        differs = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if differs:
            self.log(f"resuming without optimizer state ({differs}: (checkpoint, now)): AdamW's moments restart")
            return False
        with self.full_param_groups():
            self.optimizer.load_state_dict(state)
        return True

    def on_evaluation(self, record: dict[str, Any], scores: np.ndarray | None) -> None:
        import ray.train

        progress, config, index = self.progress, self.config, self.progress.stage_index
        progress.losses[self.stage.name] = self.earlier_losses + self.result.losses
        val = {f"val_{k}": record.get(f"val_{k}", float("nan")) for k in ("auc", "gauc", "log_loss")}
        value = selection_value({k.removeprefix("val_"): v for k, v in val.items()})
        metrics = {
            **{k: v for k, v in record.items() if v is not None and not k.startswith("val_")},
            "train_loss": all_mean([record["train_loss"]], self.device),
            "samples_per_s": all_mean([record["samples_per_s"]], self.device) * self.world,
            **val, SCORE: selection_score(value, index, self.n_stages),
        }
        if index == self.n_stages - 1:
            metrics[MODEL_EVALS] = progress.evaluations
        progress.history.append(metrics)
        self.log(f"[{self.stage.name} {progress.epoch}/{config.optim.epochs}] step {progress.global_step}: "
                 f"loss {metrics['train_loss']:.4f}, val AUC {metrics['val_auc']:.4f}, "
                 f"{metrics['samples_per_s']:.2f} samples/s", flush=True)
        scores = np.zeros(0) if scores is None else scores
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            meta = {"world_size": self.world, "stage_index": index, "step": progress.step}
            with self.full_param_groups():
                save_optimizer_state(self.optimizer, directory, optimizer_file(self.rank), **meta)
            with gathered(self.model):
                if self.rank == 0:
                    extra = {"train": config.model_dump(mode="json"), "metrics": metrics}
                    save_artifact(self.model, directory,
                                  extra={**extra, "tracking": self.tracking} if self.tracking else extra)
                    (directory / PROGRESS_FILE).write_text(json.dumps(asdict(progress)) + "\n")
                    by_id = {r["sample_id"]: float(s) for r, s in zip(self.all_val_rows, scores)}
                    (directory / VAL_SCORES_FILE).write_text(json.dumps(by_id) + "\n")
            if self.rank == 0 and self.best is not None:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in self.best.items()}, str(directory / BEST_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint-{index}-{self.stage.name}-epoch{progress.epoch:03d}")


def read_restored(checkpoint: Any, model: ATFLRecModel, rank: int) -> Restored:
    """Progress, trained tensors (loaded through ``model``), best tensors and this rank's optimizer state."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as name:
        directory = Path(name)
        progress = read_progress(directory)
        load_weights(model, directory)
        best = load_file(str(directory / BEST_FILE)) if (directory / BEST_FILE).is_file() else None
        optimizer = read_optimizer_state(directory, optimizer_file(rank))
    return Restored(progress, trained_state(model), best, optimizer)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
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
    checkpoint = ray.train.get_checkpoint()
    if rank == 0:
        record_worker_group(loop_config["run_dir"], world, checkpoint)
    torch.set_num_threads(config.scaling.torch_threads())
    device = ray.train.torch.get_device()
    features = features_of(ray.train.get_dataset_shard(FEATURES))
    val_rows = rows_of(ray.train.get_dataset_shard(VAL))
    # This worker's rows, read once and held in the training table's order (as the local loop holds
    # them), whatever order the shard delivered; the loop shuffles them per epoch.
    train_rows = table_order(rows_of(ray.train.get_dataset_shard("train")))
    run_name = context.get_experiment_name()  # a Tune trial's run is named after the trial: lines say whose they are

    def log(message: str, **_: Any) -> None:
        if rank == 0:
            say(f"{run_name}: {message}")

    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32  # halves host memory for big models
    zero3_config = ds_config if zero_stage(ds_config) == 3 else None
    if zero3_config is not None:
        return_freed_blocks()

    def fresh_model() -> ATFLRecModel:
        model = build_model(config.model, config.seed, device, dtype, zero3_config=zero3_config)
        fit_audio_normalisation(model, loop_config["train_items"], features)
        return model

    progress = Progress()
    restored: Restored | None = None
    resumed_from: dict[str, Any] | None = None  # where this attempt started, when from a checkpoint
    carried: dict[str, torch.Tensor] | None = None  # trained tensors handed from stage to stage
    if checkpoint is not None:
        restored = read_restored(checkpoint, fresh_model(), rank)
        progress, carried = restored.progress, restored.trained
        resumed_from = {"stage_index": progress.stage_index, "epoch": progress.epoch, "step": progress.step,
                        "global_step": progress.global_step, "optimizer_restored": False, "optimizer_steps": None}
        log(f"resuming at stage {progress.stage_index}, epoch {progress.epoch}, step {progress.global_step}")
        if progress.stage_done:  # the stage had ended: its best tensors go on to the next stage
            carried = {**carried, **(restored.best or {})}
            progress.next_stage()
            restored = None

    stages = STRATEGIES[config.model.fusion.strategy].stages()
    for index, stage in enumerate(stages):
        if index < progress.stage_index:
            continue
        model = fresh_model()
        if carried is not None:
            load_trained_state(model, carried)
        rows = stage_rows(stage, config.model.fusion, train_rows, val_rows, rank, world)
        loop = DeepSpeedStageLoop(model, stage, rows, make_collator(model, features), config,
                                  ds_config=ds_config, progress=progress, n_stages=len(stages), val_rows=val_rows,
                                  rank=rank, world=world, log=log, tracking=loop_config.get("tracking"))
        if restored is not None:  # continuing the stage the checkpoint was written in
            loop.best = restored.best
            resumed_from["optimizer_restored"] = loop.restore_optimizer(restored.optimizer)
            if resumed_from["optimizer_restored"]:
                steps = [s.get("step") for s in loop.optimizer.state.values()]
                resumed_from["optimizer_steps"] = int(steps[0]) if steps and steps[0] is not None else None
            restored = None
        loop.run()
        with gathered(model):
            carried = trained_state(model)
        release_stage(loop.engine, model)
        del loop, model
        if index < len(stages) - 1:
            progress.next_stage()
    final = final_evaluation(config, loop_config, features, fresh_model, rank, world, zero3_config)
    if final is None:
        return None
    return {**final, "history": progress.history, "losses": progress.losses, "resumed_from": resumed_from}


def final_evaluation(config: TrainConfig, loop_config: dict[str, Any], features: dict[str, np.ndarray],
                     fresh_model: Any, rank: int, world: int,
                     zero3_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Score the final splits with the best checkpoint loaded into a fresh model (no optimizer)."""
    import ray.train

    best = best_reported_checkpoint()
    model = fresh_model()
    if best is not None:
        with best.as_directory() as directory:
            load_weights(model, directory)
    if zero3_config is not None:
        import deepspeed

        # The base is partitioned: without an optimizer the engine only gathers each layer for its forward.
        deepspeed.initialize(model=model, config=zero3_config)
    model.eval()
    collator = make_collator(model, features)
    metrics = {}
    for split in loop_config["final_splits"]:
        rows = rows_of(ray.train.get_dataset_shard(eval_dataset_name(split)))
        metrics[split] = score_split(model, rows, collator, config, rank, world)[0]  # the driver prints them
    if rank != 0:
        return None
    return {"metrics": metrics, "best_checkpoint": uri_of(best.filesystem, best.path) if best is not None else None}
