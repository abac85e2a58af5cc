"""``atflrec features``: a dataset's audio to a Parquet feature store, in parallel with Ray Data.

The driver reads ``items.parquet`` and the store's manifest and hands every item, with the content
hash stored for it under the current parameters (if any), to one Ray Data ``map_batches`` stage.
Each task, per item: resolves the audio path inside the dataset, reads the bytes of a regular file
(a FIFO, device or directory is quarantined as ``not-a-file`` without being read, a file over
``max_audio_bytes`` as ``too-large``) and hashes them (sha256); an item whose hash matches is skipped, any
other is decoded within the bounds of :mod:`.audio` (sample-rate range, ``max_audio_seconds``, only
the centre crop decoded, a bounded resampling kernel) and featurised for all Mel-bin counts at once
(:mod:`.clip`). A task then writes one part file per Mel-bin count and returns one small result row
per item, so features never pass through the driver. The driver checks that input items =
featurised + already stored + quarantined, commits the index, ``quarantine.parquet`` and
``manifest.json`` (:mod:`.store`), and returns a summary.

Incremental runs: an item is recomputed when its audio bytes or any feature parameter changed
(the parameter hash covers Mel-bin counts, clip length, Kaldi options and ``FEATURE_VERSION``);
a rerun on unchanged input writes no part files. Items that left the dataset, or are now
quarantined for bad audio, leave the store. Quarantined items are retried on every run.

What a run never deletes without ``prune`` (#18 finding 6): a stored item whose audio is now
missing or unreadable keeps its features (an unmounted audio folder must not empty the store; a
parameter change that cannot recompute such items is refused), and Mel-bin counts the store has
but ``n_mels`` leaves out are kept (added to the run's counts), since a deployed model may read
them. One run writes a store at a time (:func:`.store.writer_lock`).

Ray: with ``address`` set, ``ray.init(address=...)`` joins that cluster (token authentication:
set ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` to the cluster's token); otherwise a local Ray
starts. A Ray that is already initialised is reused as it is. On a cluster every node needs
``atflrec`` importable and the dataset directory at the same path (a shared volume); the store
may be any pyarrow URI (``s3://``, ``gs://``) or shared path.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator

from atflrec.config import StrictModel
from atflrec.console import Progress, say
from atflrec.data.format import DatasetError, UnsafeAudioPath, load_dataset, resolve_audio_path
from atflrec.features import store
from atflrec.features.audio import MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS, BadAudio, decode, read_regular_file
from atflrec.features.clip import ClipFeatures, clip_samples, featurise_decoded
from atflrec.features.fbank import KALDI_OPTIONS, MAX_MELS, MIN_MELS, SAMPLE_RATE, frame_count
from atflrec.ray_connect import connect
from atflrec.storage import absolute_uri

# Bump when a code change alters the features for the same audio and parameters.
FEATURE_VERSION = 1
STATUSES = ("featurised", "skipped", "quarantined")
MISSING_REASONS = ("missing", "unreadable")  # no audio to read now: says nothing about the stored features
TASK_FEATURE_BYTES = 512 * 1024**2

RESULT_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("path", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("sha256", pa.string()),
        ("part", pa.string()),
        ("n_frames", pa.int32()),
        ("read_s", pa.float64()),
        ("decode_s", pa.float64()),
        ("features_s", pa.float64()),
        ("write_s", pa.float64()),
    ]
)


class FeatureConfig(StrictModel):
    """Settings of the feature stage (``atflrec features``)."""

    n_mels: list[int] = Field(
        default_factory=lambda: [40, 64, 80, 128],
        description="Mel-bin counts to store; all come from one power spectrum per clip",
    )
    clip_seconds: float = Field(
        4.0, ge=0.025, le=600.0,
        description="clip length in seconds: longer clips keep their centre, shorter ones are padded at the end",
    )
    max_audio_seconds: float = Field(
        MAX_AUDIO_SECONDS, gt=0, le=24 * 3600,
        description="longest audio accepted, in seconds, as its header declares; longer files are quarantined "
                    "(too-long) before decoding. Only the centre crop is ever decoded",
    )
    max_audio_bytes: int = Field(
        MAX_AUDIO_BYTES, ge=1, description="largest audio file read, in bytes; larger ones are quarantined (too-large)"
    )
    address: str | None = Field(None, description="Ray cluster address (e.g. auto); unset starts Ray locally")
    batch_size: int = Field(
        64, ge=1, le=4096, description="clips per Ray task; a task writes one part file per Mel-bin count"
    )
    prune: bool = Field(
        False,
        description="drop stored items whose audio is now missing or unreadable, and Mel-bin counts not in "
                    "n_mels (without it a run only adds and updates)",
    )

    @field_validator("n_mels")
    @classmethod
    def _valid_n_mels(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one Mel-bin count")
        bad = [n for n in value if not MIN_MELS <= n <= MAX_MELS]
        if bad:
            raise ValueError(f"Mel-bin counts must lie in [{MIN_MELS}, {MAX_MELS}]; got {bad}")
        return sorted(set(value))


@dataclass(frozen=True)
class FeatureSummary:
    """What one run did; ``describe()`` is what the CLI prints."""

    store: str
    n_mels: list[int]
    clip_seconds: float
    inputs: int
    featurised: int
    skipped: int
    quarantined: int
    dropped: int
    reasons: dict[str, int] = field(default_factory=dict)
    kept_without_audio: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0

    def describe(self) -> str:
        rate = self.featurised / max(self.pipeline_seconds, 1e-9)
        lines = [
            f"feature store {self.store} (Mel bins {', '.join(map(str, self.n_mels))}; {self.clip_seconds:g} s clips)",
            f"  {self.inputs} input items = {self.featurised} featurised + {self.skipped} already stored"
            f" + {self.quarantined} quarantined",
        ]
        if self.reasons:
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.reasons.items()))
            lines.append(f"  quarantined: {reasons} (details in {self.store}/{store.QUARANTINE_FILE})")
        if self.kept_without_audio:
            lines.append(f"  {self.kept_without_audio} of those already stored kept although their audio is missing or "
                         "unreadable now (--prune drops them)")
        if self.dropped:
            lines.append(f"  {self.dropped} item(s) left the store (no longer in the dataset, or now quarantined)")
        speed = f" ({rate:.3g} clips/s featurised)" if self.featurised else ""
        lines.append(f"  {self.seconds:.1f} s in all; pipeline {self.pipeline_seconds:.1f} s{speed}")
        return "\n".join(lines)


def feature_params(config: FeatureConfig) -> dict[str, Any]:
    """Everything that determines the stored features; its hash decides what must be recomputed."""
    return {
        "n_mels": config.n_mels,
        "clip_seconds": config.clip_seconds,
        "sample_rate": SAMPLE_RATE,
        "frames": frame_count(clip_samples(config.clip_seconds)),
        "kaldi_options": KALDI_OPTIONS,
        "crop": "centre",
        "pad": "end",
        "feature_version": FEATURE_VERSION,
    }


def _param_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


# --- worker side ------------------------------------------------------------------------------

@dataclass
class _Outcome:
    status: str
    reason: str | None = None
    detail: str | None = None
    sha256: str | None = None
    clip: ClipFeatures | None = None
    read_s: float = 0.0
    decode_s: float = 0.0
    features_s: float = 0.0


def _process_item(audio_path: str, stored_sha256: str, data_root: str, n_mels: list[int],
                  clip_seconds: float, max_seconds: float = MAX_AUDIO_SECONDS,
                  max_bytes: int = MAX_AUDIO_BYTES) -> _Outcome:
    """One item: safe path, bytes, hash, skip-or-featurise; every failure becomes a quarantine reason."""
    try:
        path = resolve_audio_path(data_root, audio_path)
    except UnsafeAudioPath as exc:
        return _Outcome("quarantined", "unsafe-path", str(exc))
    start = time.perf_counter()
    try:
        data = read_regular_file(path, max_bytes)  # a FIFO or device is refused, never read (it could block)
    except BadAudio as exc:
        return _Outcome("quarantined", exc.reason, f"{audio_path}: {exc.detail}")
    except FileNotFoundError:
        return _Outcome("quarantined", "missing", f"{audio_path} does not exist in the dataset")
    except OSError as exc:
        return _Outcome("quarantined", "unreadable", f"{type(exc).__name__}: {exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    read_s = time.perf_counter() - start
    if sha256 == stored_sha256:
        return _Outcome("skipped", sha256=sha256, read_s=read_s)
    try:
        start = time.perf_counter()
        samples = decode(data, path.suffix, clip_samples(clip_seconds), max_seconds)
        decoded = time.perf_counter()
        clip = featurise_decoded(samples, n_mels, clip_seconds)
    except BadAudio as exc:
        return _Outcome("quarantined", exc.reason, exc.detail, sha256, read_s=read_s)
    except Exception as exc:  # one odd file must not fail the whole run: quarantine it, say why
        return _Outcome("quarantined", "failed", f"{type(exc).__name__}: {exc}", sha256, read_s=read_s)
    done = time.perf_counter()
    return _Outcome("featurised", sha256=sha256, clip=clip, read_s=read_s,
                    decode_s=decoded - start, features_s=done - decoded)


def _featurise_batch(batch: pa.Table, *, data_root: str, store_uri: str, n_mels: list[int],
                     clip_seconds: float, run_id: str, max_seconds: float = MAX_AUDIO_SECONDS,
                     max_bytes: int = MAX_AUDIO_BYTES) -> pa.Table:
    """Ray Data stage: featurise a batch of items, write its part files, return one row per item."""
    rows = batch.to_pylist()
    outcomes = [_process_item(r["audio_path"], r["stored_sha256"], data_root, n_mels, clip_seconds, max_seconds,
                              max_bytes) for r in rows]
    done = [(row, o) for row, o in zip(rows, outcomes) if o.clip is not None]
    part, write_share = None, 0.0
    if done:
        part = f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet"
        start = time.perf_counter()
        for n in n_mels:
            # torch converts to float16 several times faster than numpy, with the same rounding.
            features = torch.from_numpy(np.stack([o.clip.features[n] for _, o in done])).half().numpy()
            store.write_part(store_uri, n, part, [row["item_id"] for row, _ in done],
                             [o.clip.n_frames for _, o in done], features)
        write_share = (time.perf_counter() - start) / len(done)
    return pa.Table.from_pylist(
        [
            {"item_id": row["item_id"], "path": row["audio_path"], "status": o.status, "reason": o.reason,
             "detail": o.detail, "sha256": o.sha256, "part": part if o.clip else None,
             "n_frames": o.clip.n_frames if o.clip else None, "read_s": o.read_s, "decode_s": o.decode_s,
             "features_s": o.features_s, "write_s": write_share if o.clip else 0.0}
            for row, o in zip(rows, outcomes)
        ],
        schema=RESULT_SCHEMA,
    )


# --- driver side ------------------------------------------------------------------------------

def _run_pipeline(rows: list[dict[str, str]], data_root: str, store_uri: str, config: FeatureConfig,
                  run_id: str, cpus: int) -> pa.Table:
    import ray

    # At least two tasks per CPU when the dataset is small, so every core gets work; few enough
    # long clips per task that a task's float32 features stay within TASK_FEATURE_BYTES.
    clip_bytes = 4 * frame_count(clip_samples(config.clip_seconds)) * sum(config.n_mels)
    batch_size = max(1, min(config.batch_size, math.ceil(len(rows) / (2 * cpus)), TASK_FEATURE_BYTES // clip_bytes))
    say(f"featurising {len(rows)} items with Ray Data on {cpus} CPUs ({math.ceil(len(rows) / batch_size)} tasks)")
    results = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size)).map_batches(
        _featurise_batch,
        batch_size=batch_size,
        batch_format="pyarrow",
        fn_kwargs={"data_root": data_root, "store_uri": store_uri, "n_mels": config.n_mels,
                   "clip_seconds": config.clip_seconds, "run_id": run_id,
                   "max_seconds": config.max_audio_seconds, "max_bytes": config.max_audio_bytes},
        num_cpus=1,
    )
    # A single operator: Ray Data's per-operator reservation would only idle CPUs (on 2 CPUs it ran
    # one task at a time). This changes this dataset's own copy of the context, nothing global.
    results.context.op_resource_reservation_enabled = False
    progress, tables = Progress("items featurised", len(rows)), []
    for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):  # each task's results, as it ends
        tables.append(table.cast(RESULT_SCHEMA))
        progress.update(table.num_rows)
    return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()


def _check_accounting(item_ids: list[str], results: pa.Table) -> Counter[str]:
    """Every input item has exactly one result with a known status, so inputs = featurised +
    skipped + quarantined; raises otherwise."""
    result_ids = results.column("item_id").to_pylist()
    statuses = Counter(results.column("status").to_pylist())
    if len(result_ids) != len(item_ids) or set(result_ids) != set(item_ids) or set(statuses) - set(STATUSES):
        raise RuntimeError(
            f"accounting mismatch: {len(item_ids)} input items, {len(result_ids)} results "
            f"({len(set(item_ids) - set(result_ids))} missing), statuses {dict(statuses)}"
        )
    return statuses


def _split_results(results: pa.Table, reusable: dict[str, dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    """The new index (featurised and skipped items) and quarantine table from the result rows."""
    index_rows, quarantine_rows = [], []
    for r in results.to_pylist():
        if r["status"] == "featurised":
            index_rows.append({"item_id": r["item_id"], "audio_path": r["path"], "sha256": r["sha256"],
                               "part": r["part"], "n_frames": r["n_frames"]})
        elif r["status"] == "skipped":
            index_rows.append(reusable[r["item_id"]] | {"audio_path": r["path"]})
        else:
            quarantine_rows.append({k: r[k] for k in store.QUARANTINE_SCHEMA.names})
    return (pa.Table.from_pylist(index_rows, schema=store.INDEX_SCHEMA),
            pa.Table.from_pylist(quarantine_rows, schema=store.QUARANTINE_SCHEMA))


def _versions() -> dict[str, str | None]:
    import soundfile

    found = {name: version(name) for name in ("atflrec", "ray", "torch", "torchaudio", "pyarrow", "numpy", "soundfile")}
    return found | {"python": platform.python_version(), "libsndfile": soundfile.__libsndfile_version__,
                    "ffmpeg": shutil.which("ffmpeg")}


def build_feature_store(data_dir: str | Path, out_uri: str, config: FeatureConfig) -> FeatureSummary:
    """Featurise a dataset's audio into the store at ``out_uri`` (path or URI); incremental."""
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    run_id = started_at.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    dataset = load_dataset(data_dir)
    item_ids = dataset.items.column("item_id").to_pylist()
    audio_paths = dataset.items.column("audio_path").to_pylist()
    duplicates = sorted(i for i, n in Counter(item_ids).items() if n > 1)
    if duplicates:
        raise DatasetError(f"items.parquet repeats item_id(s) {duplicates[:5]}; run `atflrec data validate`")

    store_uri = absolute_uri(out_uri)
    with store.writer_lock(store_uri):
        return _build_locked(data_dir, store_uri, config, dataset, item_ids, audio_paths, started, started_at, run_id)


def _build_locked(data_dir: str | Path, store_uri: str, config: FeatureConfig, dataset: Any, item_ids: list[str],
                  audio_paths: list[str], started: float, started_at: datetime, run_id: str) -> FeatureSummary:
    previous = store.read_manifest(store_uri)
    if previous is not None and not config.prune:
        kept = sorted(set(previous["params"]["n_mels"]) - set(config.n_mels))
        if kept:
            say(f"note: keeping the store's {kept}-bin features too (a deployed model may read them; "
                "--prune drops them)")
            config = config.model_copy(update={"n_mels": sorted(set(config.n_mels) | set(kept))})
    params = feature_params(config)
    param_hash = _param_hash(params)
    old_index = store.read_index(store_uri, previous) if previous else store.INDEX_SCHEMA.empty_table()
    same_params = previous is not None and previous["param_hash"] == param_hash
    reusable = {row["item_id"]: row for row in old_index.to_pylist()} if same_params else {}
    rows = [
        {"item_id": i, "audio_path": p, "stored_sha256": reusable[i]["sha256"] if i in reusable else ""}
        for i, p in zip(item_ids, audio_paths)
    ]
    plan_s = time.perf_counter() - started

    start = time.perf_counter()
    cpus = connect(config.address) if rows else 0
    ray_start_s = time.perf_counter() - start
    start = time.perf_counter()
    data_root = str(Path(data_dir).resolve())
    results = _run_pipeline(rows, data_root, store_uri, config, run_id, cpus) if rows else RESULT_SCHEMA.empty_table()
    pipeline_s = time.perf_counter() - start
    statuses = _check_accounting(item_ids, results)

    index, quarantine = _split_results(results, reusable)
    index, quarantine, kept_without_audio = _keep_missing(index, quarantine, old_index, reusable, config.prune,
                                                          same_params)
    stored_ids = set(index.column("item_id").to_pylist())
    dropped = len(set(old_index.column("item_id").to_pylist()) - stored_ids)
    # Same rows as the live index: keep its file, so an unchanged rerun writes no table at all.
    unchanged = previous is not None and old_index.sort_by("item_id").equals(index.sort_by("item_id"))
    reasons = dict(Counter(quarantine.column("reason").to_pylist()))
    worker_s = {name: float(np.sum(results.column(name).to_numpy()))
                for name in ("read_s", "decode_s", "features_s", "write_s")}
    # Kept items count as already stored (inputs = featurised + skipped + quarantined still holds).
    statuses["quarantined"] -= kept_without_audio
    statuses["skipped"] += kept_without_audio
    counts = {"inputs": len(item_ids), **{s: statuses[s] for s in STATUSES}, "dropped": dropped,
              "kept_without_audio": kept_without_audio}
    manifest = {
        "store_version": store.STORE_VERSION,
        "params": params,
        "param_hash": param_hash,
        "index": previous["index"] if unchanged else f"index-{run_id}.parquet",
        "stored_items": index.num_rows,
        "quarantined_items": quarantine.num_rows,
        "last_run": {
            "run_id": run_id,
            "started_at": started_at.isoformat(),
            "data_dir": data_root,
            "counts": counts,
            "reasons": reasons,
            "timings_s": {"plan": plan_s, "ray_start": ray_start_s, "pipeline": pipeline_s,
                          **{f"workers_{k}": v for k, v in worker_s.items()}},
            "ray": {"address": config.address, "cpus": cpus},
            "versions": _versions(),
        },
    }
    store.commit(store_uri, manifest, index, quarantine)
    return FeatureSummary(
        store=store_uri, n_mels=config.n_mels, clip_seconds=config.clip_seconds, inputs=len(item_ids),
        featurised=statuses["featurised"], skipped=statuses["skipped"], quarantined=statuses["quarantined"],
        dropped=dropped, reasons=reasons, seconds=time.perf_counter() - started, pipeline_seconds=pipeline_s,
        kept_without_audio=kept_without_audio,
    )


def _keep_missing(index: pa.Table, quarantine: pa.Table, old_index: pa.Table, reusable: dict[str, dict[str, Any]],
                  prune: bool, same_params: bool) -> tuple[pa.Table, pa.Table, int]:
    """Without ``prune``: stored items whose audio is missing or unreadable now stay in the index
    (and out of the quarantine). Their features can only be kept under unchanged parameters: a
    parameter change that would drop them is refused."""
    if prune or old_index.num_rows == 0:
        return index, quarantine, 0
    stored = set(old_index.column("item_id").to_pylist())
    rows = quarantine.to_pylist()
    lost = [r for r in rows if r["item_id"] in stored and r["reason"] in MISSING_REASONS]
    if not lost:
        return index, quarantine, 0
    if not same_params:
        raise store.StoreError(
            f"{len(lost)} stored item(s) have no readable audio now (e.g. {lost[0]['path']}: {lost[0]['detail']}); "
            "the feature parameters changed, so their features cannot be kept or recomputed. Mount the audio, "
            "or pass --prune to drop them")
    say(f"warning: {len(lost)} stored item(s) have no readable audio now (e.g. {lost[0]['detail']}); "
        "their features are kept (--prune drops them)")
    lost_ids = {r["item_id"] for r in lost}
    kept = pa.Table.from_pylist([reusable[i] for i in sorted(lost_ids)], schema=store.INDEX_SCHEMA)
    remaining = pa.Table.from_pylist([r for r in rows if r["item_id"] not in lost_ids], schema=store.QUARANTINE_SCHEMA)
    return pa.concat_tables([index, kept]), remaining, len(lost_ids)
