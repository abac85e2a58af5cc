"""bench/tune_scale.py's bookkeeping on hand-made search folders: throughput windows, lost and
repeated trials, disk. (The search itself runs in tests/cluster/test_multinode.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("tune_scale")


def test_trials_per_minute_in_windows_of_finishing_order(bench: ModuleType) -> None:
    ends = [100 + 30 * i for i in range(1, 7)]  # one trial every 30 s after t=100
    assert bench.rates(ends, started=100, window=2) == [{"trials": 2, "per_min": 2.0}, {"trials": 4, "per_min": 2.0},
                                                        {"trials": 6, "per_min": 2.0}]
    assert bench.rates(ends[:1], started=100, window=2) == []


def write_trial(out: Path, trial_id: str, epochs: list[int], status: str, attempts: int = 1) -> dict:
    run = out / "trials" / f"trial-{trial_id}"
    run.mkdir(parents=True)
    lines = [json.dumps({"stage_index": 0, "epoch": e}) for e in epochs]
    cut = '{"stage_index": 0, "ep'  # the line a killed run was writing: skipped
    (run / "reports.jsonl").write_text("\n".join([*lines, cut]) + "\n")
    (out / "search" / f"trial-{trial_id}").mkdir(parents=True)
    return {"trial_id": trial_id, "status": status, "attempts": attempts, "worker_group_replaced": False,
            "reports": len(set(epochs))}


def test_lost_and_repeated_trials_are_counted(bench: ModuleType, tmp_path: Path) -> None:
    rows = [write_trial(tmp_path, "a", [1, 2, 3], "completed"),
            write_trial(tmp_path, "b", [1], "stopped"),
            write_trial(tmp_path, "c", [1, 2, 2], "completed", attempts=2),  # epoch 2 trained twice
            write_trial(tmp_path, "d", [1], "error")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "results.parquet")
    counts = bench.outcome_counts(tmp_path, trials=5)  # one trial never made it into the results
    assert counts["lost"] == 2 and counts["failed"] == 1 and counts["distinct_trial_ids"] == 4
    assert counts["repeated"] == 1 and counts["repeated_trials"] == ["trial-c"]
    assert (counts["completed"], counts["stopped"], counts["retried"]) == (2, 1, 1)


def test_disk_use_counts_every_file(bench: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x").write_bytes(b"0" * 2**19)
    (tmp_path / "a" / "b" / "y").write_bytes(b"0" * 2**19)
    assert bench.dir_mb(tmp_path) == pytest.approx(1.0)
