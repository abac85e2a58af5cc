"""What a search leaves behind: the results table, learning curves, pruned checkpoints and best/.

A trial's history is its Train run's report log (:class:`~atflrec.tuning.trial.ReportLog`). Its
status is ``completed`` when the run finished (or made its last report: the last epoch of its last
stage), ``stopped`` when ASHA ended it earlier, ``error`` when its Train run failed. Stopped trials will
never run again, so their checkpoints are deleted: as each one stops (:class:`PruneStoppedTrials`)
and once more after the search, which also catches a checkpoint a stopping run was still writing.
The one checkpoint ranked best so far (by Train's selection score) is never deleted. Errored trials keep
theirs: ``--resume`` restarts them from there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from ray.tune import Callback

from atflrec.config import dump_config
from atflrec.errors import UserError
from atflrec.model.fusion import STRATEGIES
from atflrec.storage import canonical, delete_dir, is_dir, join, list_dirs, uri_on
from atflrec.training.distributed_config import TrainConfig
from atflrec.training.worker import MODEL_EVALS, SCORE, read_worker_groups
from atflrec.tuning.space import SearchPlan, expected_reports, lora_config, trial_config
from atflrec.tuning.trial import read_attempts, read_outcome, read_reports, run_name

CURVE_COLUMNS = ("stage", "stage_index", "epoch", "global_step", "train_loss", "samples_per_s", "val_auc",
                 "val_gauc", "val_log_loss", SCORE, MODEL_EVALS, "stage_done", "checkpoint_path")
RESULTS, CURVES = "results", "curves"


class SearchError(UserError, RuntimeError):
    """A search that could not start, resume or produce a best trial."""


@dataclass
class TrialRecord:
    trial_id: str
    knobs: dict[str, Any]
    config: TrainConfig
    reports: list[dict[str, Any]] = field(default_factory=list)  # one per (stage, epoch), in order
    error: str | None = None
    outcome: dict[str, Any] | None = None  # final metrics, when the run finished
    attempts: int = 1  # starts of the trial's driver: more than one after a retry or a restored search
    worker_groups: int = 0  # starts of its Train run's worker group: each driver start makes one, a lost worker another

    @property
    def worker_group_replaced(self) -> bool:
        """More worker groups than driver starts: a lost worker's group was replaced inside the run."""
        return self.worker_groups > self.attempts

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "completed" if ran_to_the_end(self.config, self.reports, self.outcome) else "stopped"

    @property
    def best(self) -> dict[str, Any] | None:
        """The report Train ranks first (:func:`~atflrec.training.worker.selection_score`: validation
        AUC, a model with every stage trained above any unfinished one); among equals, a kept one."""
        scored = [r for r in self.reports if _finite(r.get(SCORE))]
        return max(scored, key=lambda r: (r[SCORE], _kept(r.get("checkpoint_path")) is not None)) if scored else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def is_final(config: TrainConfig, report: dict[str, Any] | None) -> bool:
    """Whether ``report`` is a run's last: the last stage's, once that stage ended (its last epoch,
    max_steps or early stopping)."""
    if report is None:
        return False
    stages = len(STRATEGIES[config.model.fusion.strategy].stages())
    done = report.get("stage_done", report.get("epoch") == config.optim.epochs)
    return report.get("stage_index") == stages - 1 and bool(done)


def ran_to_the_end(config: TrainConfig, reports: list[dict[str, Any]], outcome: dict[str, Any] | None) -> bool:
    """A finished run wrote its outcome; one ASHA stopped at its last report still made them all."""
    return outcome is not None or is_final(config, reports[-1] if reports else None)


def records(grid: Any, plan: SearchPlan, runs: str) -> list[TrialRecord]:
    """One record per trial of a finished (or restored) Tune run; reports come from each run's log."""
    out = []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial-")
        config = result.config or {}  # None for a trial that failed before its first report
        knobs = {k: config[k] for k in plan.knobs if k in config}
        name = run_name(trial_id)
        error = None if result.error is None else str(result.error).strip().splitlines()[-1][:500]
        out.append(TrialRecord(trial_id, knobs, trial_config(plan.base, knobs, name, runs),
                               reports=read_reports(runs, name), error=error, outcome=read_outcome(runs, name),
                               attempts=max(1, len(read_attempts(runs, name))),
                               worker_groups=len(read_worker_groups(join(runs, name)))))
    return sorted(out, key=lambda r: r.trial_id)


def _kept(path: str | None) -> str | None:
    return path if path and is_dir(path) else None


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def results_table(trials: list[TrialRecord], plan: SearchPlan) -> pa.Table:
    rows = []
    for t in trials:
        best = t.best or {}
        metrics = (t.outcome or {}).get("metrics", {})
        rows.append({
            "trial_id": t.trial_id, "status": t.status,
            **{key: _cell(t.knobs.get(key)) for key in plan.knobs},
            "fusion_strategy": t.config.model.fusion.strategy,
            "lora_config": lora_config(t.config.model.fusion.strategy),
            "best_val_auc": best.get("val_auc"), "best_stage": best.get("stage"), "best_epoch": best.get("epoch"),
            SCORE: best.get(SCORE),
            "reports": len(t.reports), "expected_reports": expected_reports(t.config),
            "test_auc": metrics.get("test", {}).get("auc"), "cold_auc": metrics.get("cold", {}).get("auc"),
            "checkpoint": _kept(best.get("checkpoint_path")), "error": t.error, "attempts": t.attempts,
            "worker_groups": t.worker_groups, "worker_group_replaced": t.worker_group_replaced,
        })
    return pa.Table.from_pylist(rows)


def curves_table(trials: list[TrialRecord]) -> pa.Table:
    rows = [{"trial_id": t.trial_id, "status": t.status, "report": i + 1, **{k: r.get(k) for k in CURVE_COLUMNS}}
            for t in trials for i, r in enumerate(t.reports)]
    return pa.Table.from_pylist(rows)


def write_tables(trials: list[TrialRecord], plan: SearchPlan, out: Path) -> tuple[pa.Table, pa.Table]:
    """``results.parquet`` / ``.csv`` (one row per trial) and ``curves.parquet`` (one row per report)."""
    table, curves = results_table(trials, plan), curves_table(trials)
    pq.write_table(table, out / f"{RESULTS}.parquet")
    pacsv.write_csv(table, out / f"{RESULTS}.csv")
    pq.write_table(curves, out / f"{CURVES}.parquet")
    return table, curves


# --- checkpoints ---------------------------------------------------------------------------------

def prune(run_dir: str, keep: str | None = None) -> int:
    """Delete a run's checkpoints except ``keep`` (a checkpoint's path or URI); returns how many went."""
    removed = 0
    for directory in list_dirs(run_dir, prefix="checkpoint"):
        if keep is None or canonical(directory) != canonical(keep):
            delete_dir(directory)
            removed += 1
    return removed


def best_trial(trials: list[TrialRecord]) -> TrialRecord:
    """The trial whose best report (by selection score) ranks first and whose checkpoint is kept."""
    kept = [t for t in trials if t.best and _kept(t.best.get("checkpoint_path"))]
    if not kept:
        raise SearchError("no trial reported a validation AUC with a checkpoint; see the errors in the results table")
    return max(kept, key=lambda t: t.best[SCORE])


def prune_stopped(trials: list[TrialRecord], runs: str, best: TrialRecord | None) -> int:
    removed = 0
    for t in trials:
        if t.status == "stopped":
            keep = best.best["checkpoint_path"] if best is not None and t is best else None
            removed += prune(join(runs, run_name(t.trial_id)), keep)
    return removed


def export_best(best: TrialRecord, target: str) -> str:
    """The best trial's best checkpoint (an artifact ``load_artifact`` reads) plus its resolved
    training config (``train_config.yaml``) and what the search measured (``trial.json``), to a
    local directory or a remote URI; returns where it went."""
    from ray.train import Checkpoint

    from atflrec.training.distributed import export_checkpoint

    summary = {"trial_id": best.trial_id, "status": best.status, "knobs": best.knobs,
               "val_auc": best.best["val_auc"], "stage": best.best["stage"], "epoch": best.best["epoch"],
               "final_metrics": (best.outcome or {}).get("metrics")}
    extra = {"train_config.yaml": dump_config(best.config), "trial.json": json.dumps(summary, indent=2) + "\n"}
    return export_checkpoint(Checkpoint(best.best["checkpoint_path"]), target, extra)


class PruneStoppedTrials(Callback):
    """Tune callback: deletes an ASHA-stopped trial's checkpoints as it stops (sparing the overall
    best one), so a long search keeps ``run.keep_best`` checkpoints per live or finished trial only."""

    def __init__(self, base: dict[str, Any], runs: str) -> None:
        self.base, self.runs = base, runs
        self.best: tuple[float, str | None, str | None] = (-math.inf, None, None)  # score, trial, checkpoint
        self.stopped: set[str] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        score, path = result.get(SCORE), result.get("checkpoint_path")
        if _finite(score) and path and score > self.best[0]:
            path = uri_on(self.runs, path)  # Tune passes the path on the runs' filesystem
            previous = self.best[1]
            self.best = (score, trial.trial_id, path)
            if previous in self.stopped and previous != trial.trial_id:
                prune(join(self.runs, run_name(previous)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = run_name(trial.trial_id)
        config = trial_config(self.base, trial.config, name, self.runs)
        if not ran_to_the_end(config, read_reports(self.runs, name), read_outcome(self.runs, name)):
            self.stopped.add(trial.trial_id)
            prune(join(self.runs, name), self.best[2] if self.best[1] == trial.trial_id else None)
