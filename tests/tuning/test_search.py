"""A real search on a tiny model: `atflrec tune` is killed after a trial finished, refuses to start
over, resumes without rerunning finished trials, prunes stopped trials' checkpoints and exports a
best/ that loads and scores like the trainer scored it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from tune_setup import make_space

REPO = Path(__file__).resolve().parents[2]  # the subprocess searches run from the checkout

ATFLREC = str(Path(sys.executable).parent / "atflrec")


@dataclass
class Search:
    out: Path
    space: dict[str, Any]
    finished: dict[str, dict[str, Any]]  # trial id -> what it had left when the search was killed
    log: str
    again: subprocess.CompletedProcess
    resumed: subprocess.CompletedProcess


def _terminated(out: Path) -> set[str]:
    """Trials the search's saved state records as finished."""
    states = sorted((out / "search").glob("experiment_state-*.json"))
    try:
        trials = [json.loads(t[0]) for t in json.loads(states[-1].read_text())["trial_data"]] if states else []
    except (json.JSONDecodeError, OSError):  # being replaced
        return set()
    return {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}


def _snapshot(out: Path, trial_id: str) -> dict[str, Any]:
    run = out / "trials" / f"trial-{trial_id}"
    return {
        "checkpoints": {p.name: p.stat().st_mtime_ns for p in run.glob("checkpoint-*")},
        "log": (run / "reports.jsonl").read_text(),
        "outcome": (run / "trial_outcome.json").stat().st_mtime_ns,
    }


@pytest.fixture(scope="module")
def search(tune_benchmark: Path, tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Search:
    root = tmp_path_factory.mktemp("search")
    space = make_space(tune_benchmark, tiny_base_dir, root / "out", root / "features")
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    command = [ATFLREC, "tune", "--space", str(root / "space.yaml")]
    out = root / "out"
    with open(root / "first.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 480
        finished: set[str] = set()
        while time.time() < deadline and process.poll() is None and not finished:
            # A finished trial that ran to its end has written its outcome: wait for one.
            finished = {t for t in _terminated(out) if (out / "trials" / f"trial-{t}" / "trial_outcome.json").exists()}
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGKILL)  # the search and the Ray cluster it started
        process.wait()
    first_log = (root / "first.log").read_text()
    assert finished, "no trial finished before the search was killed:\n" + first_log[-3000:]
    snapshots = {t: _snapshot(out, t) for t in _terminated(out)
                 if (out / "trials" / f"trial-{t}" / "trial_outcome.json").exists()}
    time.sleep(2)  # let the killed Ray processes go
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    return Search(out, space, snapshots, first_log, again, resumed)


def test_a_killed_search_resumes_without_rerunning_its_finished_trials(search: Search) -> None:
    assert search.again.returncode == 2 and "--resume" in search.again.stderr  # never silently started over
    assert "resuming the search" in search.resumed.stdout
    for trial_id, before in search.finished.items():
        assert _snapshot(search.out, trial_id) == before, f"finished trial {trial_id} ran again"
    results = pq.read_table(search.out / "results.parquet").to_pylist()
    assert len(results) == 4
    assert {r["status"] for r in results} <= {"completed", "stopped"}
    for row in results:
        if row["trial_id"] in search.finished:
            assert row["status"] == "completed" and row["reports"] == row["expected_reports"] == 2
            assert (row["attempts"], row["worker_groups"]) == (1, 1), row
        # A restored trial starts its driver and its worker group again; no worker was lost inside a run.
        assert row["worker_groups"] >= 1 and not row["worker_group_replaced"], row


def test_every_mel_count_of_the_space_was_featurised_once_before_the_trials(search: Search) -> None:
    from atflrec.features.store import read_manifest

    store = search.space["train"]["features"]
    assert read_manifest(store)["params"]["n_mels"] == [8, 12]
    assert len(list(Path(store).glob("index-*.parquet"))) == 1  # one build; the resume reused it
    assert "already holds Mel-bin counts [8, 12]" in search.resumed.stdout


def test_the_best_trial_exports_an_artifact_that_scores_like_the_trainer(search: Search) -> None:
    from atflrec.model.artifact import load_artifact
    from atflrec.samples import read_samples
    from atflrec.training.distributed_config import TrainConfig
    from atflrec.training.local import load_item_features, make_collator, predict

    best = search.out / "best"
    results = pq.read_table(search.out / "results.parquet").to_pylist()
    summary = json.loads((best / "trial.json").read_text())
    ranked = max((r for r in results if r["checkpoint"]), key=lambda r: r["selection_score"])
    assert (summary["trial_id"], summary["val_auc"]) == (ranked["trial_id"], ranked["best_val_auc"])
    config = TrainConfig.model_validate(yaml.safe_load((best / "train_config.yaml").read_text()))
    for key, value in summary["knobs"].items():
        node: Any = config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value

    model = load_artifact(best)
    trainer_scores = json.loads((best / "val_scores.json").read_text())
    val = read_samples(config.samples, "val")
    table = val.filter(pc.is_in(val.column("sample_id"), value_set=pa.array(list(trainer_scores))))
    rows = table.to_pylist()
    features = load_item_features(config.features, config.model.encoder.n_mels, [table])
    scores = predict(model, rows, make_collator(model, features), batch_size=8)
    assert len(rows) == len(trainer_scores) > 0
    assert np.allclose(scores, [trainer_scores[r["sample_id"]] for r in rows], atol=1e-5)


def test_only_the_best_checkpoints_are_kept_and_stopped_trials_keep_none(search: Search) -> None:
    results = pq.read_table(search.out / "results.parquet").to_pylist()
    best = json.loads((search.out / "best" / "trial.json").read_text())["trial_id"]
    keep = search.space["train"]["run"]["keep_best"]
    for row in results:
        kept = list((search.out / "trials" / f"trial-{row['trial_id']}").glob("checkpoint-*"))
        if row["status"] == "stopped":
            assert len(kept) == (1 if row["trial_id"] == best else 0), row
        else:
            assert 1 <= len(kept) <= keep + 1, row  # the best K, and the latest
        assert row["checkpoint"] is None or Path(row["checkpoint"]) in kept


def test_the_results_table_and_plots(search: Search) -> None:
    parquet = pq.read_table(search.out / "results.parquet")
    csv = pacsv.read_csv(search.out / "results.csv")
    assert parquet.column("trial_id").to_pylist() == csv.column("trial_id").to_pylist()
    for key in search.space["space"]:
        assert key in parquet.column_names
    curves = pq.read_table(search.out / "curves.parquet").to_pylist()
    for row in parquet.to_pylist():
        reports = [c for c in curves if c["trial_id"] == row["trial_id"]]
        assert len(reports) == row["reports"]
        assert max(reports, key=lambda c: c["selection_score"])["val_auc"] == row["best_val_auc"]
    plots = search.out / "plots"
    expected = {"learning_curves.png"} | {f"val_auc_vs_{k.replace('.', '_')}.png" for k in search.space["space"]}
    assert {p.name for p in plots.glob("*.png")} == expected
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.glob("*.png"))


def test_the_final_sweep_prunes_a_trial_that_stopped_early(search: Search, tmp_path: Path) -> None:
    """A completed trial's real run dir, read as if it had more epochs to go: it counts as stopped
    and loses its checkpoints, unless it is the best trial, which keeps exactly its best one."""
    from atflrec.tuning.results import TrialRecord, prune_stopped
    from atflrec.tuning.space import TuneSpace, plan

    search_plan = plan(TuneSpace.model_validate(search.space))
    trial_id = sorted(search.finished)[0]
    runs = tmp_path / "trials"
    shutil.copytree(search.out / "trials" / f"trial-{trial_id}", runs / f"trial-{trial_id}")
    curves = [c for c in pq.read_table(search.out / "curves.parquet").to_pylist() if c["trial_id"] == trial_id]
    for report in curves:
        report["checkpoint_path"] = str(runs / f"trial-{trial_id}" / Path(report["checkpoint_path"]).name)
        report["stage_done"] = False  # with a third epoch to go, its last stage had not ended
    knobs = json.loads((search.out / "search" / f"trial-{trial_id}" / "params.json").read_text())
    longer = search_plan.trial_config({**knobs, "optim.epochs": 3})
    record = TrialRecord(trial_id, knobs, longer, reports=curves)
    assert record.status == "stopped"

    before = len(list((runs / f"trial-{trial_id}").glob("checkpoint-*")))
    assert prune_stopped([record], str(runs), best=record) == before - 1
    left = list((runs / f"trial-{trial_id}").glob("checkpoint-*"))
    assert [str(p) for p in left] == [record.best["checkpoint_path"]]
    assert prune_stopped([record], str(runs), best=None) == 1
    assert not list((runs / f"trial-{trial_id}").glob("checkpoint-*"))
