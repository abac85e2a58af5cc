"""What any training run needs, locally or on a Ray cluster (its own module: the local path, the
Ray Train config and the experiment tracking all read it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from atflrec.config import StrictModel
from atflrec.model.network import ModelConfig
from atflrec.tracking import TrackingConfig
from atflrec.training.loop import OptimConfig


class TrainingSettings(StrictModel):
    """What any training run needs, in this process or on a Ray cluster."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="the model to train")
    samples: str | None = Field(
        None, description="samples directory (from `atflrec samples` or import-instructions); required")
    features: str | None = Field(None, description="feature store URI; unset trains without audio")
    shots: int | None = Field(64, ge=1, description="few-shot training set size; unset uses every train sample")
    seed: int = Field(0, description="seed for the few-shot draw, initialisation and shuffling")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimisation")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast locally, DeepSpeed bf16 on Ray")
    eval_splits: list[str] = Field(default_factory=lambda: ["val", "test", "cold"], description="splits to score")
    eval_batch_size: int = Field(16, ge=1, description="samples per scoring batch")
    max_eval_samples: int | None = Field(None, ge=1, description="seeded subsample of each eval split")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="record the run in MLflow (off)")
