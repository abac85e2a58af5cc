"""One Tune trial: build the trial's training config, run it as a Ray Train run, report to Tune.

This is the Train V2 pattern: the trial function is only the driver of its Train run (it asks Tune
for no CPU; the Train workers reserve their own), and ``TuneReportCallback`` passes every Train
report (with its checkpoint's path) on to Tune; ``ReportLog`` keeps them in the run dir too.
The Train run is named after the trial id, so a restored search finds a trial's run again and
continues it from its latest checkpoint instead of starting over. Run dirs are a volume every node
mounts, or a remote URI (``s3://``: :mod:`atflrec.storage`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from ray.train import UserCallback

from atflrec.storage import append_line, join, read_json_lines, read_text, uri_of, write_text
from atflrec.tracking import RunRef, tracked
from atflrec.training.distributed import build_trainer, outcome_of, run_exists
from atflrec.training.tracking import log_outcome, training_tags
from atflrec.tuning.space import trial_config

OUTCOME_FILE = "trial_outcome.json"  # in the trial's Train run dir, once the run has finished
REPORTS_FILE = "reports.jsonl"  # in the trial's Train run dir: every report, as it is made
ATTEMPTS_FILE = "attempts.jsonl"  # in the trial's Train run dir: one line per start of the trial's driver
TRIAL_ID = "atflrec.trial_id"  # tag of a trial's MLflow run


class ReportLog(UserCallback):
    """Appends each report of a Train run (metrics and checkpoint path) to ``reports.jsonl`` in the
    run's dir, before Tune hears of it. A trial's history then survives a killed search: Tune
    starts a restored trial's own result file afresh, and a trial that had made all its reports
    before the kill makes none after it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        path = uri_of(checkpoint.filesystem, checkpoint.path) if checkpoint else None
        entry = {**metrics[0], "checkpoint_path": path}
        append_line(self.path, json.dumps(entry))


def run_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


def trial_dirname(trial: Any) -> str:
    """Tune's folder for a trial: the same stable name as its Train run (no config in it)."""
    return run_name(trial.trial_id)


def run_trial(knobs: dict[str, Any], base: dict[str, Any], runs: str, search_run: RunRef | None = None) -> None:
    """Tune's function trainable; ``knobs`` is the sampled point, ``base`` the resolved training config;
    with ``search_run`` (tracking on) the trial is an MLflow run nested under the search's."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    name = run_name(trial_id)
    config = trial_config(base, knobs, name, runs)
    resume = run_exists(runs, name)
    with tracked(None, parent=search_run, kind="trial", name=name, identity=trial_identity(runs, name),
                 resume=resume, params=config.model_dump(mode="json")) as run:
        if run:
            run.set_tags({**training_tags(config), TRIAL_ID: trial_id,
                          **{f"atflrec.knob.{k}": json.dumps(v) for k, v in knobs.items()}})
        log = ReportLog(join(runs, name, REPORTS_FILE))
        trainer = build_trainer(config, resume=resume, callbacks=[log, TuneReportCallback()], tracking=run.ref)
        record_attempt(runs, name, resume)  # after build_trainer's check that a new run's dir is not there yet
        outcome = outcome_of(trainer.fit(), out=None)  # raises when the run failed: Tune marks the trial ERROR
        log_outcome(run, outcome.metrics, artifact=None)
    summary = {"metrics": outcome.metrics, "best_checkpoint": outcome.best_checkpoint,
               "resumed_from": outcome.resumed_from}  # where its last worker group resumed, if from a checkpoint
    write_text(join(runs, name, OUTCOME_FILE), json.dumps(summary) + "\n")


def record_attempt(runs: str, name: str, resumed: bool) -> None:
    """One line per start of a trial's driver: a retry (Tune's ``trial_max_failures``, after e.g. a
    lost node) or a restored search starts it again, resuming its Train run when one exists. (A retry
    that finds only this file resumes a run with no checkpoint, which starts from the beginning.)"""
    import ray

    entry = {"started": time.time(), "resumed_run": resumed, "node_id": ray.get_runtime_context().get_node_id()}
    append_line(join(runs, name, ATTEMPTS_FILE), json.dumps(entry))


def read_attempts(runs: str, name: str) -> list[dict[str, Any]]:
    return read_json_lines(join(runs, name, ATTEMPTS_FILE))


def trial_identity(runs: str, name: str) -> str:
    return f"trial:{join(runs, name)}"


def read_outcome(runs: str, name: str) -> dict[str, Any] | None:
    """A finished trial's final metrics (the final splits of its best checkpoint), or None."""
    text = read_text(join(runs, name, OUTCOME_FILE))
    return json.loads(text) if text is not None else None


def read_reports(runs: str, name: str) -> list[dict[str, Any]]:
    """A trial's reports, one per (stage, epoch) in order (a resumed run may repeat the one it was
    killed at; the later wins); ``[]`` before the first."""
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    for report in read_json_lines(join(runs, name, REPORTS_FILE)):
        latest[(report["stage_index"], report["epoch"])] = report
    return [latest[key] for key in sorted(latest)]
