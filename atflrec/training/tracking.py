"""What a training run records in MLflow (see :mod:`atflrec.tracking`): its per-validation metrics,
as they are reported, and its outcome.

On Ray, :class:`LogReports` is a Ray Train user callback: it runs in the Train controller and
logs rank 0's report (loss, validation AUC/GAUC/log loss, samples/s averaged over ranks, the
learning-rate factor, the selection score) at every validation, stepped by the global optimizer
step. The local loop hands its records to :func:`log_record` the same way.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

from atflrec.console import say
from atflrec.tracking import ARTIFACT_PATH, BASE_MODEL, Run, RunRef, data_tags, split_metrics
from atflrec.training.settings import TrainingSettings

STEP = "global_step"
NOT_METRICS = (STEP, "step", "best_epoch")  # the step itself, and an epoch number that is not a measurement


def training_tags(config: TrainingSettings) -> dict[str, str]:
    return {BASE_MODEL: config.model.base_model, "atflrec.fusion": config.model.fusion.strategy,
            **data_tags(config.samples, config.features)}


def log_record(run: Run, record: dict[str, Any]) -> None:
    """One validation's record (the stage loop's, or a Train report) as metrics at its global step."""
    run.log_metrics({k: v for k, v in record.items() if k not in NOT_METRICS}, step=int(record.get(STEP, 0)))


def log_outcome(run: Run, metrics: dict[str, dict[str, float]], artifact: str | None) -> None:
    """Final metrics per split, and the exported artifact with the lineage tag naming its path."""
    run.log_metrics(split_metrics(metrics))
    if artifact is not None:
        run.log_model(artifact)
        run.set_tags({ARTIFACT_PATH: artifact})


class LogReports(UserCallback):
    """Logs each report of a Ray Train run to its MLflow run, as it is made (on the controller)."""

    def __init__(self, ref: RunRef) -> None:
        self.ref = ref
        self.run: Run | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        try:
            self.run = self.run or Run.attach(self.ref)
            log_record(self.run, metrics[0])
        except Exception as exc:  # an unreachable tracking server must not end a training run
            say(f"warning: could not log report to MLflow run {self.ref.run_id}: {type(exc).__name__}: {exc}")
