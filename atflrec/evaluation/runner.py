"""``atflrec evaluate``: every model variant on every (shots, seed), scored on every split.

Data are prepared once per run: the training split, the evaluation rows (one seeded subsample per
split, the same for every model), the item catalogue and the audio features (per Mel-bin count, on
first use). Jobs run grouped by (shots, seed); within a group the models share trained parts
through the memo in :class:`~atflrec.baselines.base.Context` (see :mod:`atflrec.baselines.llm`),
and variants with identical settings are trained once.

After every job ``results.parquet`` is rewritten, so an interrupted run loses at most one job; a
rerun into the same directory skips every job whose rows are there with the same settings and
data, and drops rows of jobs the config no longer has. ``report.md`` and the plots are rebuilt at
the end (:mod:`atflrec.evaluation.report`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atflrec.baselines import Context, Item, build_recommender
from atflrec.baselines.base import RECOMMENDERS, Row, rows_key
from atflrec.config import ConfigError, dump_config
from atflrec.console import say
from atflrec.errors import UserError
from atflrec.evaluation.config import EvalConfig, Job, plan_jobs
from atflrec.evaluation.outputs import (
    CONFIG_FILE,
    EVAL_ROWS_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    RESULTS_SCHEMA,
    RUN_FILE,
    SUMMARY_FILE,
)
from atflrec.evaluation.report import write_report
from atflrec.io import atomic_write_bytes, atomic_write_text
from atflrec.metrics import auc, evaluate_scores, users_with_both_labels
from atflrec.samples import META_FILE, few_shot, read_samples
from atflrec.tracking import BASE_MODEL, Run, data_tags, open_run, tracked

JOB_COLUMNS = ("model", "variant", "ablation", "shots", "seed")


@dataclass
class EvalData:
    train: pa.Table
    evals: dict[str, list[Row]]  # report split name -> rows
    validation: list[Row]  # what model searches select on
    items: dict[str, Item]
    features: Any  # n_mels -> features, or None
    data_dir: Path | None
    key: str  # fingerprint of all of the above


class StoreFeatures:
    """Features of the cited items, loaded from the store once per Mel-bin count."""

    def __init__(self, store: str, item_ids: list[str]) -> None:
        self.store, self.item_ids = store, item_ids
        self.load = lru_cache(maxsize=None)(self._load)

    def _load(self, n_mels: int) -> Mapping[str, np.ndarray]:
        from atflrec.features.store import load_features

        return load_features(self.store, n_mels, self.item_ids)

    def __call__(self, n_mels: int) -> Mapping[str, np.ndarray]:
        return self.load(n_mels)


def _data_dir(config: EvalConfig) -> Path | None:
    if config.data is not None:
        return Path(config.data)
    meta = Path(config.samples) / META_FILE
    source = json.loads(meta.read_text()).get("source") if meta.is_file() else None
    return Path(source) if source and (Path(source) / "items.parquet").is_file() else None


def _catalogue(data_dir: Path | None, tables: list[pa.Table]) -> dict[str, Item]:
    """Titles and tags of every item; without a dataset, the titles the samples carry (no tags)."""
    if data_dir is not None:
        from atflrec.data.format import read_items

        items = read_items(data_dir)
        return {i: Item(t, tuple(g)) for i, t, g in zip(items.column("item_id").to_pylist(),
                                                        items.column("title").to_pylist(),
                                                        items.column("tags").to_pylist())}
    catalogue: dict[str, Item] = {}
    for table in tables:
        for row in table.to_pylist():
            catalogue.setdefault(row["item_id"], Item(row["title"]))
            for kind in ("liked", "disliked"):
                for item, title in zip(row[f"{kind}_ids"], row[f"{kind}_titles"]):
                    catalogue.setdefault(item, Item(title))
    return catalogue


def _eval_table(config: EvalConfig, split: str) -> pa.Table:
    table = read_samples(config.samples, split)
    if config.max_eval_samples is not None and table.num_rows > config.max_eval_samples:
        table = few_shot(table, config.max_eval_samples, config.eval_seed)
    return table


def prepare_data(config: EvalConfig) -> EvalData:
    if config.samples is None:
        raise ConfigError("samples: set the samples directory (e.g. samples=runs/demo/samples)")
    train = read_samples(config.samples, "train")
    evals: dict[str, list[Row]] = {}
    tables = [train]
    for name, split in config.splits.items():
        table = _eval_table(config, split)
        evals[name] = table.to_pylist()
        tables.append(table)
    selects = any(spec.search or RECOMMENDERS[spec.resolved_kind].uses_llm for spec in config.models)
    validation = _eval_table(config, config.validation_split).to_pylist() if selects else []
    data_dir = _data_dir(config)
    items = _catalogue(data_dir, tables)
    features = StoreFeatures(config.features, sorted(items)) if config.features is not None else None
    manifest = None
    if config.features is not None:
        from atflrec.features.store import read_manifest

        manifest = read_manifest(config.features)
        if manifest is None:
            raise ConfigError(f"features: no feature store at {config.features!r} (run `atflrec features` first)")
    key = hashlib.sha1(json.dumps({
        "train": rows_key(train.to_pylist()),
        "evals": {name: rows_key(rows) for name, rows in evals.items()},
        "validation": rows_key(validation),
        "items": hashlib.sha1(repr(sorted(items.items())).encode()).hexdigest(),
        "features": None if manifest is None else [manifest.get("index"), manifest.get("params")],
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return EvalData(train, evals, validation, items, features, data_dir, key)


def _fit(job: Job, data: EvalData, train_rows: list[Row],
         shared: dict[str, Any]) -> tuple[Any, str | None, float | None]:
    """The job's fitted model; for a search, the candidate with the best validation AUC (first on ties),
    with its point and that AUC."""
    context = Context(data.items, data.features, job.seed, shared, data.validation)
    if not job.candidates:
        recommender = build_recommender(job.kind, job.settings)
        recommender.fit(train_rows, context)
        return recommender, None, None
    labels = [r["label"] for r in data.validation]
    best: tuple[Any, str | None, float | None] = (None, None, None)
    for point, settings in job.candidates:
        recommender = build_recommender(job.kind, settings)
        recommender.fit(train_rows, context)
        value = auc(labels, recommender.score(data.validation))
        value = -1.0 if np.isnan(value) else value  # one-class validation rows: keep the first candidate
        if best[2] is None or value > best[2]:
            best = (recommender, point, value)
    return best


def _score_rows(job: Job, data: EvalData, train_rows: list[Row], shared: dict[str, Any]) -> list[dict[str, Any]]:
    """Fit the job's model (or select it by validation) and score every split: one result row per split."""
    start = time.perf_counter()
    recommender, chosen, val_auc = _fit(job, data, train_rows, shared)
    fit_seconds = time.perf_counter() - start
    rows = []
    for split, eval_rows in data.evals.items():
        start = time.perf_counter()
        scores = recommender.score(eval_rows)
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(scores)):
            raise RuntimeError(f"{job.model} ({job.variant}) gave non-finite scores on {split}")
        metrics = evaluate_scores([r["label"] for r in eval_rows], scores, [r["user_id"] for r in eval_rows])
        rows.append({"split": split, "n_eval": len(eval_rows), **metrics, "fit_seconds": fit_seconds,
                     "score_seconds": seconds, "scores": [float(v) for v in scores], "chosen": chosen,
                     "val_auc": val_auc})
    del recommender
    gc.collect()
    return rows


def _job_fields(job: Job, data_key: str) -> dict[str, Any]:
    return {"model": job.model, "kind": job.kind, "variant": job.variant, "ablation": job.ablation,
            "shots": job.shots, "seed": job.seed, "settings_key": job.settings_key, "data_key": data_key}


def _previous(path: Path) -> dict[tuple, list[dict[str, Any]]]:
    """Rows of an earlier run, by job."""
    if not path.is_file():
        return {}
    done: dict[tuple, list[dict[str, Any]]] = {}
    for row in pq.read_table(path).to_pylist():
        done.setdefault(tuple(row[c] for c in JOB_COLUMNS), []).append(row)
    return done


def _write_table(path: Path, table: pa.Table) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())  # readers never see a half-written file


OUR_FILES = (CONFIG_FILE, RUN_FILE, RESULTS_FILE)


class EvalOutError(UserError):
    """``--out`` holds something an evaluation must not overwrite."""


def _results_config(config: EvalConfig) -> dict[str, Any]:
    """What decides an evaluation's results: its config, every default filled in (so a record written
    before a field existed compares by meaning), without where it is recorded."""
    import yaml

    return {k: v for k, v in yaml.safe_load(dump_config(config)).items() if k != "tracking"}


def check_out(out: Path, config: EvalConfig, replace: bool = False) -> None:
    """Refuse an ``out`` holding another configuration's evaluation (unless ``replace``) or files
    that are not an evaluation's at all (#18 finding 9: ``--quick`` over the committed default
    evaluation silently replaced it). The same configuration resumes."""
    import yaml

    if not out.exists():
        return
    if not out.is_dir():
        raise EvalOutError(f"--out {out}: exists and is not a directory")
    entries = list(out.iterdir())
    if not entries:
        return
    if not any((out / name).is_file() for name in OUR_FILES):
        raise EvalOutError(f"--out {out}: a non-empty directory without an evaluation in it; name a new directory")
    written = out / CONFIG_FILE
    if written.is_file() and not replace:
        try:
            recorded = EvalConfig.model_validate(yaml.safe_load(written.read_text()))
            same = _results_config(recorded) == _results_config(config)
        except (OSError, yaml.YAMLError, ValueError):  # unreadable, or no longer a valid configuration
            same = False
        if not same:
            raise EvalOutError(
                f"--out {out}: holds an evaluation of another configuration ({written}); its results would be "
                "replaced. Name another --out, or pass --replace to replace them")


def _write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_table(path, pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA))


def _write_eval_rows(path: Path, data: EvalData) -> None:
    """Which rows every model scored, in order: what the per-row ``scores`` of the results refer to."""
    _write_table(path, pa.Table.from_pylist(
        [{"split": split, "sample_id": r["sample_id"], "user_id": r["user_id"], "label": int(r["label"])}
         for split, rows in data.evals.items() for r in rows],
        schema=pa.schema([("split", pa.string()), ("sample_id", pa.string()), ("user_id", pa.string()),
                          ("label", pa.int8())])))


def _oracle(data: EvalData) -> dict[str, float]:
    """AUC of the benchmark generator's noise-free like logit on the eval rows, when the dataset has
    it (``hidden/likes.parquet``): an upper bound for the report. No model reads it."""
    path = None if data.data_dir is None else data.data_dir / "hidden" / "likes.parquet"
    if path is None or not path.is_file():
        return {}
    table = pq.read_table(path)
    logit = dict(zip(zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist()),
                     table.column("like_logit").to_pylist()))
    out = {}
    for split, rows in data.evals.items():
        if rows and all((r["user_id"], r["item_id"]) in logit for r in rows):
            out[split] = auc([r["label"] for r in rows], [logit[(r["user_id"], r["item_id"])] for r in rows])
    return out


def _earlier_invocations(path: Path, data_key: str) -> list[dict[str, Any]]:
    """Invocations that finished into this directory on the same data (an interrupted one writes no record)."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    return list(earlier.get("invocations", [])) if earlier.get("data_key") == data_key else []


def _machine() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _track_job(evaluation: Run, job: Job, label: str, rows: list[dict[str, Any]], reused: bool) -> None:
    """One job as a run nested under the evaluation's: what it trained, and its metrics per split."""
    if not evaluation:
        return
    params = {"model": job.model, "kind": job.kind, "variant": job.variant, "ablation": job.ablation,
              "shots": job.shots, "seed": job.seed, "settings": job.settings.model_dump(mode="json")}
    child = open_run(None, parent=evaluation.ref, kind="evaluation-job", name=label, params=params,
                     tags={"atflrec.model": job.model, "atflrec.reused": str(reused).lower(),
                           "atflrec.settings_key": job.settings_key})
    metrics = {f"{r['split']}_{k}": r[k] for r in rows for k in ("auc", "gauc", "log_loss", "n_eval", "score_seconds")}
    child.log_metrics({**metrics, "fit_seconds": rows[0]["fit_seconds"], "val_auc": rows[0]["val_auc"]})
    child.end()


def _run_jobs(jobs: list[Job], data: EvalData, out: Path, clock: float, tracking: Run) -> int:
    """Every job, its rows written to ``results.parquet`` as it ends (those already there with the
    same settings and data are skipped); returns how many jobs ran."""
    previous = _previous(out / RESULTS_FILE)
    results: list[dict[str, Any]] = []
    trained: dict[tuple, list[dict[str, Any]]] = {}  # (settings key, shots, seed) -> split rows
    shared: dict[str, Any] = {}
    draws: dict[tuple[int, int], list[Row]] = {}
    block, jobs_run = None, 0
    for number, job in enumerate(jobs, 1):
        fields = _job_fields(job, data.key)
        label = f"[{number}/{len(jobs)}] {job.model}" + (f" {job.ablation}={job.variant}" if job.ablation else "") \
            + f" shots={job.shots} seed={job.seed}"
        old = previous.get(tuple(fields[c] for c in JOB_COLUMNS), [])
        memo = (job.settings_key, job.shots, job.seed)
        if old and all(r["settings_key"] == job.settings_key and r["data_key"] == data.key for r in old) \
                and {r["split"] for r in old} == set(data.evals):
            results += old
            # a later variant with the same settings reuses these rows, as it would in one uninterrupted run
            trained.setdefault(memo, [{k: v for k, v in r.items() if k not in fields} for r in old])
            say(f"{label}: already in {RESULTS_FILE}, skipped")
            _track_job(tracking, job, label, old, reused=True)
            continue
        if (job.shots, job.seed) != block:  # a new few-shot draw: the shared work of the last one is done
            block, shared, draws = (job.shots, job.seed), {}, {}
            gc.collect()
        if memo not in trained:
            say(f"{label} ...")
            if block not in draws:
                draws[block] = few_shot(data.train, job.shots, job.seed).to_pylist()
            trained[memo] = _score_rows(job, data, draws[block], shared)
        jobs_run += 1
        rows = [{**fields, **split_row} for split_row in trained[memo]]
        results += rows
        _write_results(out / RESULTS_FILE, results)
        scores = ", ".join(f"{r['split']} AUC {r['auc']:.3f}" for r in rows)
        if rows[0].get("chosen"):
            scores += f" (chose {rows[0]['chosen']}: val AUC {rows[0]['val_auc']:.3f})"
        say(f"{label}: fit {rows[0]['fit_seconds']:.1f} s, {scores} (elapsed {_clock(time.perf_counter() - clock)})")
        _track_job(tracking, job, label, rows, reused=False)
    _write_results(out / RESULTS_FILE, results)
    return jobs_run


def run_evaluation(config: EvalConfig, out_dir: str | Path | None = None, command: str | None = None,
                   replace: bool = False) -> Path:
    """Run (or resume) the evaluation into ``out_dir`` (default ``config.out``); returns report.md's path.

    An ``out_dir`` holding another configuration's evaluation is refused unless ``replace`` (then
    its rows of jobs this configuration shares are reused, the others dropped). With ``tracking``
    on, each invocation is an MLflow run (config, report, plots) with one nested run per job."""
    out = Path(out_dir if out_dir is not None else config.out)
    check_out(out, config, replace)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, dump_config(config))
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    data = prepare_data(config)
    jobs = plan_jobs(config)
    say(f"evaluation: {len(jobs)} jobs; eval rows " + ", ".join(f"{k} {len(v)}" for k, v in data.evals.items())
        + f"; writing to {out}")

    _write_eval_rows(out / EVAL_ROWS_FILE, data)
    with tracked(config.tracking, kind="evaluation", name=f"evaluation {out.name}",
                 params=config.model_dump(mode="json")) as tracking:
        if tracking:
            base_model = config.llm.get("model", {}).get("base_model")
            tracking.set_tags({**data_tags(config.samples, config.features), "atflrec.eval_data_key": data.key,
                               "atflrec.out": str(out.resolve()), BASE_MODEL: base_model})
        jobs_run = _run_jobs(jobs, data, out, clock, tracking)

        wall = time.perf_counter() - clock
        invocations = _earlier_invocations(out / RUN_FILE, data.key) + [
            {"started": started.isoformat(timespec="seconds"), "wall_seconds": wall, "jobs_run": jobs_run}]
        run = {
            "command": command, "started": started.isoformat(timespec="seconds"),
            "wall_seconds": wall, "jobs": len(jobs), "invocations": invocations, "machine": _machine(),
            "data_key": data.key,
            "samples": config.samples, "features": config.features,
            "data": None if data.data_dir is None else str(data.data_dir),
            "eval_rows": {k: len(v) for k, v in data.evals.items()}, "train_rows": data.train.num_rows,
            "gauc_users": {k: users_with_both_labels([r["label"] for r in v], [r["user_id"] for r in v])
                           for k, v in data.evals.items()},
            "oracle_auc": _oracle(data),
        }
        atomic_write_text(out / RUN_FILE, json.dumps(run, indent=2) + "\n")
        report = write_report(out, config, run)
        for name in (REPORT_FILE, SUMMARY_FILE, RUN_FILE, CONFIG_FILE, RESULTS_FILE):
            tracking.log_file(out / name)
        for plot in sorted(out.glob("*.png")):
            tracking.log_file(plot, "plots")
    say(f"report: {report}")
    return report
