"""``atflrec train``: Ray Train (V2) ``TorchTrainer`` + DeepSpeed around the local loop's pieces.

The driver reads the samples and the features their items need, hands them to the workers as Ray
Data datasets (``train`` is split across workers; ``val``, the final splits and ``features`` are
read whole by every worker), runs :func:`atflrec.training.worker.train_loop_per_worker` and exports
the best checkpoint. A run lives at ``run.storage_path/run.name``; running again with ``resume``
continues it from its latest checkpoint (Ray Train restores the run's checkpoint history).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from atflrec.config import ConfigError
from atflrec.console import say
from atflrec.errors import UserError
from atflrec.ray_connect import connect
from atflrec.samples import SAMPLE_SCHEMA
from atflrec.storage import absolute_uri, is_remote, join, list_names, publish_dir, resolve, uri_of
from atflrec.tracking import RunRef, tracked
from atflrec.training.deepspeed_config import resolve_deepspeed_config
from atflrec.training.distributed_config import TrainConfig
from atflrec.training.local import cited_item_ids, load_eval_rows, load_item_features, load_train_table
from atflrec.training.worker import (
    FEATURES,
    ROW_INDEX,
    SCORE,
    eval_dataset_name,
    read_worker_groups,
    train_loop_per_worker,
)


class TrainingError(UserError, RuntimeError):
    """A run that could not start or did not finish."""


@dataclass
class TrainOutcome:
    run_path: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # final splits, best checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)  # every validation's report, in order
    losses: dict[str, list[float]] = field(default_factory=dict)  # per stage, per optimizer step (rank 0's)
    best_checkpoint: str | None = None
    resumed_from: dict[str, Any] | None = None  # stage, epoch and steps the last attempt resumed at; optimizer_restored
    worker_groups: int = 1  # worker groups started over the run's life (a lost one is replaced; --resume starts one)
    exported: str | None = None


def features_table(features: dict[str, np.ndarray]) -> pa.Table:
    """Item features as plain columns (float16 bytes + shape) that Ray Data moves without extensions."""
    items = sorted(features)
    return pa.table({
        "item_id": pa.array(items, pa.string()),
        "n_frames": pa.array([features[i].shape[0] for i in items], pa.int32()),
        "n_mels": pa.array([features[i].shape[1] for i in items], pa.int32()),
        "features": pa.array([np.ascontiguousarray(features[i], dtype=np.float16).tobytes() for i in items],
                             pa.binary()),
    })


def run_exists(storage_path: str, name: str) -> bool:
    fs, root = resolve(storage_path)
    return fs.get_file_info(f"{root}/{name}").type != pafs.FileType.NotFound


def build_datasets(config: TrainConfig, final_splits: list[str]) -> tuple[dict[str, Any], list[str], int]:
    """Ray Data datasets for the workers, the items the training rows cite, and the train row count."""
    import ray.data

    train = load_train_table(config)
    evals = {split: load_eval_rows(config, split) for split in ["val", *final_splits]}
    eval_tables = [pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA) for rows in evals.values()]
    features = load_item_features(config.features, config.model.encoder.n_mels, [train, *eval_tables])
    indexed = train.append_column(ROW_INDEX, pa.array(range(train.num_rows), pa.int64()))  # workers restore the order
    datasets = {"train": ray.data.from_arrow(indexed), FEATURES: ray.data.from_arrow(features_table(features))}
    for split, table in zip(evals, eval_tables):
        datasets[eval_dataset_name(split)] = ray.data.from_arrow(table)
    return datasets, cited_item_ids([train]), train.num_rows


def check_run(config: TrainConfig, resume: bool) -> str:
    """Refuse a run that cannot start (an existing run without ``resume``, or the reverse; bf16 on
    CPU workers); returns the run's storage URI."""
    if config.precision == "bf16" and not config.scaling.use_gpu:
        raise ConfigError("precision: bf16 runs on GPU workers (scaling.use_gpu=true); CPU workers train in fp32")
    storage = absolute_uri(config.run.storage_path)
    exists = run_exists(storage, config.run.name)
    if exists and not resume:
        raise TrainingError(f"run {config.run.name!r} already exists under {storage}; "
                            "pass --resume to continue it or set run.name=... for a new run")
    if resume and not exists:
        raise TrainingError(f"--resume: no run {config.run.name!r} under {storage}")
    return storage


def build_trainer(config: TrainConfig, resume: bool = False, callbacks: list[Any] | None = None,
                  tracking: RunRef | None = None) -> Any:
    """The ``TorchTrainer`` of a run (datasets read, DeepSpeed config resolved); ``callbacks`` are
    Ray Train user callbacks (e.g. Tune's report callback when a Tune trial runs the trainer);
    ``tracking`` is the MLflow run that records every report and that every checkpoint names."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ds_config = resolve_deepspeed_config(
        config.deepspeed.config, config.deepspeed.overrides, batch_size=config.optim.batch_size,
        grad_accum=config.optim.grad_accum, max_grad_norm=config.optim.max_grad_norm,
        bf16=config.precision == "bf16",
    )
    storage = check_run(config, resume)
    callbacks = list(callbacks or [])
    if tracking is not None:
        from atflrec.training.tracking import LogReports

        callbacks.append(LogReports(tracking))

    connect(config.address)
    # The train split is fed by a coordinator that runs with this process's DataContext: its
    # progress bars would interleave with the workers' epoch lines.
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    final_splits = [s for s in config.eval_splits if s != "val"]
    datasets, train_items, n_train = build_datasets(config, final_splits)
    workers = config.scaling.num_workers
    if n_train % workers:
        say(f"note: {n_train} training samples over {workers} workers: Ray Data gives each worker "
            f"{n_train // workers} per epoch so that all step together; {n_train % workers} per epoch are left out")
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "deepspeed": ds_config,
                           "train_items": train_items, "final_splits": final_splits,
                           "run_dir": join(storage, config.run.name),
                           "tracking": tracking.as_dict() if tracking is not None else None},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=config.scaling.use_gpu,
                                     resources_per_worker=config.scaling.resources_per_worker()),
        run_config=RunConfig(
            name=config.run.name, storage_path=storage, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.run.keep_best,
                                               checkpoint_score_attribute=SCORE, checkpoint_score_order="max"),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def outcome_of(result: Any, out: str | None) -> TrainOutcome:
    """What a finished run reports; exports its best checkpoint to ``out`` when set."""
    if result.error is not None:
        raise TrainingError(f"training failed: {result.error}") from result.error
    outcome = TrainOutcome(run_path=uri_of(result.filesystem, result.path))
    returned = result.return_value or {}
    outcome.history = returned.get("history", [])
    outcome.losses = returned.get("losses", {})
    outcome.resumed_from = returned.get("resumed_from")
    outcome.worker_groups = len(read_worker_groups(outcome.run_path))
    outcome.metrics = returned.get("metrics", {})
    outcome.best_checkpoint = returned.get("best_checkpoint")
    if out is not None and outcome.best_checkpoint is not None:
        best = [c for c, _ in result.best_checkpoints or []
                if uri_of(c.filesystem, c.path) == outcome.best_checkpoint]
        if not best:
            raise TrainingError(
                f"the best checkpoint {outcome.best_checkpoint} is not among the run's kept checkpoints")
        outcome.exported = export_checkpoint(best[0], out)
    return outcome


def train(config: TrainConfig, resume: bool = False) -> TrainOutcome:
    """Run (or with ``resume`` continue) a training run; returns its final metrics and paths.

    With ``tracking`` on, the run is recorded in MLflow (resumed runs continue theirs): the resolved
    config, every validation's metrics, the final metrics and the exported artifact, which names the run."""
    if config.out is not None:
        check_export_target(config.out)  # refuse a bad --out before training, not after
    storage = check_run(config, resume)  # before a tracking run is opened for it
    identity = f"train:{storage}/{config.run.name}"
    with tracked(config.tracking, kind="train", name=config.run.name, identity=identity, resume=resume,
                 params=config.model_dump(mode="json")) as run:
        if run:
            from atflrec.training.tracking import training_tags

            run.set_tags(training_tags(config))
        outcome = outcome_of(build_trainer(config, resume, tracking=run.ref).fit(), config.out)
        if run:
            from atflrec.training.tracking import log_outcome

            log_outcome(run, outcome.metrics, outcome.exported)
    return outcome


class ExportError(UserError):
    """``--out`` names a directory an export must not replace."""


def check_export_target(out: str) -> str:
    """``out`` made absolute, if an export may write there: a new or empty directory, or an earlier
    export (an artifact: it holds ``atflrec_model.json``, or, remotely, a publish's marker). Never the
    working directory or a parent of it, never a non-empty directory that is not ours (#18 finding 5:
    ``--out .`` wiped it)."""
    from atflrec.model.artifact import META_FILE
    from atflrec.storage import INCOMPLETE

    if is_remote(out):
        names = list_names(out)
        if names and META_FILE not in names and INCOMPLETE not in names:
            raise ExportError(f"--out {out}: holds objects that are not an atflrec artifact; refusing to "
                              "replace them (name a new prefix, or an earlier export)")
        return out.rstrip("/")
    target = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ExportError(f"--out {out}: is the working directory or one of its parents; name a new directory")
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"--out {out}: exists and is not a directory")
        if any(target.iterdir()) and not (target / META_FILE).is_file():
            raise ExportError(f"--out {out}: a non-empty directory that is not an atflrec artifact; refusing to "
                              "replace it (name a new or empty directory, or an earlier export)")
    return str(target)


def export_checkpoint(checkpoint: Any, out: str, extra_files: dict[str, str] | None = None) -> str:
    """Copy a checkpoint (an artifact directory, local or in remote storage) plus ``extra_files``
    (name -> text) to ``out``, a local directory or a remote URI; returns where it went.

    The copy is made in a temporary sibling first (remotely: a local temporary directory). Locally it
    is fsynced and renamed into place; an earlier export at ``out`` is renamed aside first and removed
    only after. A kill mid-copy leaves ``out`` as it was (plus a hidden ``.NAME.*.tmp``), never a
    half-written artifact that replicas would load. Remotely, where nothing renames a directory, it
    is published with the artifact's description last (:func:`atflrec.storage.publish_dir`)."""
    import tempfile

    from atflrec.model.artifact import META_FILE

    target = check_export_target(out)
    if is_remote(target):
        with tempfile.TemporaryDirectory(prefix="atflrec-export-") as tmp:
            _fill(Path(tmp) / "artifact", checkpoint, extra_files)
            publish_dir(Path(tmp) / "artifact", target, last=META_FILE)
        return target
    return str(_replace_local(Path(target), checkpoint, extra_files))


def _fill(directory: Path, checkpoint: Any, extra_files: dict[str, str] | None) -> None:
    checkpoint.to_directory(str(directory))
    for name, text in (extra_files or {}).items():
        (directory / name).write_text(text)


def _replace_local(target: Path, checkpoint: Any, extra_files: dict[str, str] | None) -> Path:
    import uuid

    from atflrec.io import fsync_dir, fsync_tree

    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    staging = target.with_name(f".{target.name}.{tag}.tmp")
    old = target.with_name(f".{target.name}.{tag}.old")
    try:
        _fill(staging, checkpoint, extra_files)
        fsync_tree(staging)
        if target.exists():
            target.rename(old)  # ours (checked above): an earlier export, or an empty directory
        staging.rename(target)
        fsync_dir(target.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if old.exists():
        shutil.rmtree(old)
    return target
