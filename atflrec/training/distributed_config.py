"""``atflrec train``'s config: the local loop's settings plus workers, DeepSpeed and the run's storage."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from atflrec.config import ConfigRef, StrictModel
from atflrec.training.settings import TrainingSettings


class ScalingSettings(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one DeepSpeed rank each)")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); CPU workers use gloo")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker")
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per worker when use_gpu is set")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per worker; unset: cpus_per_worker")

    def resources_per_worker(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return resources

    def torch_threads(self) -> int:
        return self.threads_per_worker or max(1, int(self.cpus_per_worker))


class DeepSpeedSettings(StrictModel):
    config: ConfigRef = Field(
        "deepspeed/zero2_cpu", description="DeepSpeed JSON config: a shipped one's name (deepspeed/NAME) or a file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="merged into the file (nested keys merge)")


class RunSettings(StrictModel):
    name: str = Field("atflrec-train", min_length=1, description="run name: the folder under storage_path")
    storage_path: str = Field("runs/train", description="local path or URI (s3://, gs://) for checkpoints and results")
    max_failures: int = Field(1, ge=0, description="worker-group failures to recover from (from the last checkpoint)")
    keep_best: int = Field(
        2, ge=1, description="checkpoints kept, best by validation AUC of finished models (the latest is always kept)")


class TrainConfig(TrainingSettings):
    """``atflrec train``: a model trained by Ray Train workers with DeepSpeed."""

    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="workers and their resources")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings, description="DeepSpeed config")
    run: RunSettings = Field(default_factory=RunSettings, description="run name, storage and fault tolerance")
    address: str | None = Field(
        None, description="Ray cluster address (ray://... or auto); unset: RAY_ADDRESS or a local cluster")
    out: str | None = Field(
        None, description="export the best checkpoint here (an artifact serving loads); unset: none")

    @model_validator(mode="after")
    def _validation_split(self) -> TrainConfig:
        if "val" not in self.eval_splits:
            raise ValueError("eval_splits must include 'val': checkpoints are ranked by validation AUC")
        return self
