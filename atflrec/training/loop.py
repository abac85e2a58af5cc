"""The one stage loop: what the single-process path and every Ray Train worker run.

:class:`StageLoop` trains one stage of a fusion strategy (see :mod:`atflrec.model.fusion`): epochs
of shuffled micro-batches, gradient accumulation, ``optim.max_steps``, a warm-up and decay of the
learning rate, validation every ``optim.eval_every`` epochs, keeping the best trained tensors,
early stopping after ``optim.patience`` evaluations without improvement, and restoring the best at
the end. The parts that differ between a plain torch optimizer and a DeepSpeed engine are small
methods a subclass overrides (RecBole's ``Trainer`` pattern): ``forward_loss``, ``backward``,
``optimizer_step``, ``validation_scores``, ``capture_state``, ``restore_state`` and the
``on_evaluation`` hook (the worker writes its checkpoint and reports there). Everything the loop
needs to continue exactly is in :class:`LoopState` (JSON), the best tensors and the optimizer
state (:func:`save_optimizer_state`: safetensors + JSON, no pickle). Not the torch RNG: with LoRA
dropout > 0 a resumed stage draws other dropout masks than an uninterrupted one would.

Shuffling follows one rule, :func:`shuffle_seed`: the rows, in the training table's order (the
few-shot draw's; a Ray worker restores it from the ``row_index`` column), are permuted per (run
seed, stage, epoch), so a 1-worker Ray run and the local loop see the same batches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from atflrec.config import StrictModel
from atflrec.metrics import evaluate_scores
from atflrec.model.batch import Batch
from atflrec.model.fusion import Stage
from atflrec.model.network import ATFLRecModel
from atflrec.model.scoring import answer_loss, probability


class OptimConfig(StrictModel):
    lr: float = Field(1e-4, gt=0, description="learning rate of the LoRA adapters (TALLRec: 1e-4)")
    encoder_lr: float = Field(1e-3, gt=0, description="learning rate of the audio encoder (trained from scratch)")
    fusion_lr: float = Field(1e-2, gt=0, description="learning rate of the fusion weights or head")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(8, ge=1, description="samples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    epochs: int = Field(3, ge=1, description="passes over the training samples, per stage")
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps per stage (smoke runs)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; unset disables it")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning-rate decay after the warm-up, to 0 at the stage's last step")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="fraction of each stage's optimizer steps spent warming up linearly from 0")
    activation_checkpointing: bool = Field(
        False, description="recompute the LLM's activations in backward instead of holding them: less memory, "
                           "about one more forward pass of compute per step")
    eval_every: int = Field(1, ge=1, description="score the validation split every N epochs (and after a stage's last)")
    patience: int | None = Field(
        None, ge=1, description="stop a stage after N evaluations without improvement; unset: no early stopping")
    min_delta: float = Field(
        0.0, ge=0, description="how much the validation score must rise to count as an improvement")

    @model_validator(mode="after")
    def _patience_needs_evaluations(self) -> OptimConfig:
        if self.patience is not None and self.eval_every > self.epochs:
            raise ValueError(
                f"patience: set eval_every ({self.eval_every}) <= epochs ({self.epochs}) for early stopping")
        return self


# --- pieces shared by training and scoring --------------------------------------------------------

def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_batches(rows: Sequence[dict[str, Any]], batch_size: int,
                 seed: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """Rows in micro-batches; shuffled with ``seed`` unless it is None."""
    order = np.arange(len(rows)) if seed is None else np.random.default_rng(seed).permutation(len(rows))
    for start in range(0, len(rows), batch_size):
        yield [rows[i] for i in order[start:start + batch_size]]


def shuffle_seed(seed: int, stage_index: int, epoch: int) -> int:
    """The one shuffling rule of every training loop: a seed per (run seed, stage, epoch)."""
    return seed + 1000 * stage_index + epoch


def compute_loss(model: torch.nn.Module, batch: Batch, stage: Stage, precision: str,
                 device: torch.device) -> torch.Tensor:
    """Cross-entropy over the Yes/No answer for one micro-batch (``model`` may be a wrapper)."""
    with autocast(precision, device):
        margin = model(batch, stage)
    return answer_loss(margin, batch.labels)


@torch.no_grad()
def predict(model: torch.nn.Module, rows: Sequence[dict[str, Any]], collator: Any, batch_size: int,
            precision: str = "fp32", stage: Stage | None = None) -> np.ndarray:
    """P(Yes) per row, in row order: from the full (fused) model, or with ``stage`` from what that
    stage trains (its adapter's own margin; a fusion stage's is the full model's)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    for chunk in make_batches(rows, batch_size):
        with autocast(precision, device):
            scores.append(probability(model(collator(chunk).to(device), stage)).cpu())
    model.train(was_training)
    return torch.cat(scores).numpy() if scores else np.zeros(0)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rates for optimizer step ``step`` (0-based) of a stage of
    ``total_steps``: linear warm-up over ``warmup_steps`` (step k uses (k+1)/warmup), then constant,
    or a linear or cosine decay that reaches 0 after the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def selection_value(metrics: dict[str, float]) -> float | None:
    """What validation ranks by: AUC; where it is undefined (one class only), exp(-log loss), also
    in [0, 1] and higher for a better fit; None without a validation score."""
    auc = metrics.get("auc", float("nan"))
    if math.isfinite(auc):
        return float(auc)
    log_loss = metrics.get("log_loss", float("nan"))
    return math.exp(-log_loss) if math.isfinite(log_loss) else None


# --- optimizer state as safetensors + JSON -----------------------------------------------------------

def innermost_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16), or ``optimizer`` itself."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def save_optimizer_state(optimizer: torch.optim.Optimizer, directory: Path, name: str, **meta: Any) -> None:
    """``optimizer.state_dict()`` as ``name.safetensors`` (every tensor) and ``name.json`` (the rest)."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        plain[str(index)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[str(index)][key] = value
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(
        json.dumps({"param_groups": state["param_groups"], "plain": plain, **meta}) + "\n")


def read_optimizer_state(directory: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """What :func:`save_optimizer_state` wrote, as a ``state_dict`` and its extra metadata; None if absent."""
    from safetensors.torch import load_file

    path = directory / f"{name}.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta.pop("plain").items()}
    for key, tensor in load_file(str(directory / f"{name}.safetensors")).items():
        index, leaf = key.split(".", 1)
        state.setdefault(int(index), {})[leaf] = tensor
    # JSON turns tuples (AdamW's betas) into lists; every list but ``params`` was a tuple.
    groups = [{k: v if k == "params" or not isinstance(v, list) else tuple(v) for k, v in g.items()}
              for g in meta.pop("param_groups")]
    return {"state": state, "param_groups": groups}, meta


# --- the loop -----------------------------------------------------------------------------------------

@dataclass
class LoopState:
    """Where a run stands (JSON in every checkpoint): ``epoch`` epochs and ``step`` optimizer steps
    of stage ``stage_index`` are done (``global_step`` over every stage); the early-stopping state."""

    stage_index: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    stage_done: bool = False
    evaluations: int = 0  # of this stage
    best_score: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    bad_evaluations: int = 0  # in a row, without improvement

    def next_stage(self) -> None:
        self.stage_index += 1
        self.epoch = self.step = self.evaluations = self.bad_evaluations = 0
        self.stage_done = False
        self.best_score = self.best_epoch = self.best_step = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class StageResult:
    losses: list[float] = field(default_factory=list)  # this attempt's optimizer steps, in order
    samples_per_s: float = 0.0
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def make_optimizer(model: ATFLRecModel, stage: Stage, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over exactly the stage's trainable parts, one learning rate per part."""
    model.configure_stage(stage)
    groups = []
    if stage.adapter is not None:
        groups.append({"params": [p for p in model.llm.parameters() if p.requires_grad], "lr": optim.lr})
    if stage.train_encoder:
        groups.append({"params": list(model.encoder.parameters()), "lr": optim.encoder_lr})
    if stage.train_fusion:
        groups.append({"params": list(model.fusion.parameters()), "lr": optim.fusion_lr})
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=optim.weight_decay)


class StageLoop:
    """Trains one stage; see the module docstring. ``val_rows`` None: no validation, no selection."""

    def __init__(self, model: torch.nn.Module, stage: Stage, rows: Sequence[dict[str, Any]], collator: Any,
                 optim: OptimConfig, *, seed: int = 0, stage_index: int = 0, precision: str = "fp32",
                 val_rows: Sequence[dict[str, Any]] | None = None, eval_batch_size: int = 16,
                 state: LoopState | None = None, log: Callable[..., None] = print,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.model, self.stage, self.rows, self.collator, self.optim = model, stage, list(rows), collator, optim
        self.seed, self.precision, self.eval_batch_size, self.log = seed, precision, eval_batch_size, log
        self.on_record = on_record  # also hears every evaluation's record (e.g. experiment tracking)
        self.val_rows = list(val_rows) if val_rows else None
        self.state = state if state is not None else LoopState(stage_index=stage_index)
        self.device = next(model.parameters()).device
        self.optimizer = make_optimizer(model, stage, optim)  # also sets which parameters train
        model.checkpoint_activations(optim.activation_checkpointing)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.best: dict[str, torch.Tensor] | None = None
        self.result = StageResult()

    # --- sizes and schedule -----------------------------------------------------------------------

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.rows) / self.optim.batch_size)

    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch() / self.optim.grad_accum)

    def total_steps(self) -> int:
        total = self.optim.epochs * self.steps_per_epoch()
        return total if self.optim.max_steps is None else min(total, self.optim.max_steps)

    def warmup_steps(self) -> int:
        return math.ceil(self.optim.warmup_ratio * self.total_steps())

    def lr_factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps(), self.warmup_steps(), self.optim.schedule)

    def set_lr(self, factor: float) -> None:
        for group, base in zip(innermost_optimizer(self.optimizer).param_groups, self.base_lrs):
            group["lr"] = base * factor

    # --- what a subclass overrides ------------------------------------------------------------------

    def train_mode(self) -> None:
        self.model.train()

    def forward_loss(self, batch: Batch, boundary: bool) -> torch.Tensor:
        """The micro-batch's mean loss; ``boundary``: an optimizer step follows its backward."""
        return compute_loss(self.model, batch, self.stage, self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.optim.grad_accum).backward()

    def optimizer_step(self) -> None:
        if self.optim.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.optim.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def validation_scores(self) -> np.ndarray:
        """P(Yes) of every validation row from what this stage trains."""
        return predict(self.model, self.val_rows, self.collator, self.eval_batch_size, self.precision, self.stage)

    def capture_state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the tensors this stage trains."""
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def restore_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in state:
                    param.copy_(state[name].to(param.device, param.dtype))

    def on_evaluation(self, record: dict[str, Any], scores: np.ndarray | None) -> None:
        """Called after every evaluation, with the loop state already updated (checkpoint here)."""

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> StageResult:
        """Train from ``state`` (a fresh stage, or one resumed at an epoch boundary) to the stage's end."""
        optim, state, result = self.optim, self.state, self.result
        if state.stage_done:
            return result
        if self.val_rows is None and optim.patience is not None:
            self.log(f"stage {self.stage.name}: no validation rows, so no early stopping (patience ignored)")
        seen, start = 0, time.perf_counter()
        for epoch in range(state.epoch, optim.epochs):
            self.train_mode()
            batches = list(make_batches(self.rows, optim.batch_size, shuffle_seed(self.seed, state.stage_index, epoch)))
            epoch_losses: list[float] = []
            step_loss, micro, capped = 0.0, 0, False
            for index, chunk in enumerate(batches):
                boundary = micro + 1 == optim.grad_accum or index == len(batches) - 1  # an epoch's tail steps too
                loss = self.forward_loss(self.collator(chunk).to(self.device), boundary)
                self.backward(loss)
                step_loss += loss.item()
                micro += 1
                seen += len(chunk)
                if boundary:
                    self.set_lr(self.lr_factor(state.step))
                    self.optimizer_step()
                    state.step += 1
                    state.global_step += 1
                    result.losses.append(step_loss / micro)
                    epoch_losses.append(step_loss / micro)
                    step_loss, micro = 0.0, 0
                    if optim.max_steps is not None and state.step >= optim.max_steps:
                        capped = True
                        break
            state.epoch = epoch + 1
            last = capped or state.epoch == optim.epochs
            if last or state.epoch % optim.eval_every == 0:
                train_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
                speed = seen / max(time.perf_counter() - start, 1e-9)
                if self.evaluate(last, train_loss, speed):
                    result.stopped_early = not last
                    break
        result.samples_per_s = seen / max(time.perf_counter() - start, 1e-9)
        if self.best is not None and state.best_epoch != state.epoch:
            self.restore_state(self.best)
            self.log(f"stage {self.stage.name}: restored the best epoch ({state.best_epoch}, step {state.best_step}, "
                     f"validation score {state.best_score:.4f})")
        return result

    def evaluate(self, last: bool, train_loss: float, speed: float) -> bool:
        """Validate, keep the best state, update early stopping, call the hook; True ends the stage."""
        optim, state = self.optim, self.state
        metrics: dict[str, float] = {}
        scores = None
        if self.val_rows is not None:
            scores = self.validation_scores()
            metrics = evaluate_scores([r["label"] for r in self.val_rows], scores,
                                      [r["user_id"] for r in self.val_rows])
        value = selection_value(metrics)
        state.evaluations += 1
        if value is not None:
            if state.best_score is None or value > state.best_score + optim.min_delta:
                state.best_score, state.best_epoch, state.best_step = value, state.epoch, state.step
                state.bad_evaluations = 0
                self.best = self.capture_state()
            else:
                state.bad_evaluations += 1
        elif self.val_rows is not None and state.evaluations == 1:
            self.log(f"stage {self.stage.name}: the validation split gives no score (empty, or NaN log loss); "
                     "keeping the last state, no early stopping")
        stop = last or (optim.patience is not None and state.bad_evaluations >= optim.patience)
        state.stage_done = stop
        if stop and not last:
            self.log(f"stage {self.stage.name}: early stop after epoch {state.epoch}: {state.bad_evaluations} "
                     f"evaluations without improvement on {state.best_score:.4f} (epoch {state.best_epoch})")
        if value is not None and math.isnan(metrics.get("auc", float("nan"))) and state.evaluations == 1:
            self.log(f"stage {self.stage.name}: validation AUC is undefined (one class); selecting by exp(-log loss)")
        record = {
            "stage": self.stage.name, "stage_index": state.stage_index, "epoch": state.epoch, "step": state.step,
            "global_step": state.global_step, "train_loss": train_loss, "samples_per_s": speed,
            "lr_factor": self.lr_factor(max(state.step - 1, 0)), "stage_done": state.stage_done,
            "best_epoch": state.best_epoch, **{f"val_{k}": v for k, v in metrics.items()},
        }
        self.result.evaluations.append(record)
        self.on_evaluation(record, scores)
        if self.on_record is not None:
            self.on_record(record)
        return stop
