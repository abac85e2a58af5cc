"""atflrec.storage and the best/ export against a real S3 server (moto on 127.0.0.1): the endpoint
and credentials come from the environment alone, and a directory is published with its description
last, so a publish killed half-way leaves nothing a loader takes for an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from s3_server import SECRET, objects

from atflrec import storage
from atflrec.model.artifact import META_FILE
from atflrec.training.distributed import ExportError, export_checkpoint

FILES = [META_FILE, "encoder.safetensors", "adapters/shared/adapter_model.safetensors"]


class DirectoryCheckpoint:
    """What export reads of a Ray checkpoint: ``to_directory``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def to_directory(self, path: str) -> str:
        for name in FILES:
            (Path(path) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(path) / name).write_text(f"{self.marker}:{name}")
        return path


def test_files_logs_and_directories_round_trip_through_the_endpoint_from_the_environment(s3: str) -> None:
    fs, path = storage.resolve(f"{s3}/run")
    assert fs.type_name == "s3" and path == f"{s3.removeprefix('s3://')}/run"
    storage.write_text(f"{s3}/run/a/notes.txt", "one")
    storage.write_text(f"{s3}/run/a/notes.txt", "two")  # replaced whole
    for line in ("first", "second"):
        storage.append_line(f"{s3}/run/log.jsonl", line)
    storage.write_text(f"{s3}/run/checkpoint-1/x", "x")
    assert storage.read_text(f"{s3}/run/a/notes.txt") == "two"
    assert storage.read_text(f"{s3}/run/log.jsonl") == "first\nsecond\n"
    assert storage.read_text(f"{s3}/run/absent") is None
    assert storage.list_dirs(f"{s3}/run", prefix="checkpoint") == [f"{s3}/run/checkpoint-1"]
    assert storage.uri_on(f"{s3}/run", f"{path}/checkpoint-1") == f"{s3}/run/checkpoint-1"
    assert storage.uri_of(fs, f"{path}/checkpoint-1") == f"{s3}/run/checkpoint-1"
    storage.delete_dir(f"{s3}/run/checkpoint-1")
    assert not storage.is_dir(f"{s3}/run/checkpoint-1")
    assert sorted(objects(s3)) == [k.removeprefix(s3.removeprefix("s3://") + "/") for k in [
        f"{path}/a/notes.txt", f"{path}/log.jsonl"]]


def test_an_export_to_s3_replaces_an_earlier_one_whole_and_never_a_foreign_prefix(s3: str) -> None:
    export_checkpoint(DirectoryCheckpoint("one"), f"{s3}/best", {"trial.json": "{}"})
    storage.write_text(f"{s3}/best/stale.txt", "from the first export")
    assert export_checkpoint(DirectoryCheckpoint("two"), f"{s3}/best/") == f"{s3}/best"
    assert objects(f"{s3}/best") == {f"best/{name}": f"two:{name}".encode() for name in FILES}

    storage.write_text(f"{s3}/results/thesis.tex", "years of work")
    with pytest.raises(ExportError, match="not an atflrec artifact"):
        export_checkpoint(DirectoryCheckpoint("new"), f"{s3}/results")
    assert objects(f"{s3}/results") == {"results/thesis.tex": b"years of work"}


def test_a_publish_killed_half_way_leaves_no_description_and_the_next_one_completes(s3, monkeypatch) -> None:
    export_checkpoint(DirectoryCheckpoint("good"), f"{s3}/best")
    real_upload, uploads = storage._upload, []

    def dies_at_the_second(*args) -> None:  # the process is killed during the second upload
        uploads.append(args)
        if len(uploads) == 2:
            raise KeyboardInterrupt("killed mid-upload")
        real_upload(*args)

    monkeypatch.setattr(storage, "_upload", dies_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(DirectoryCheckpoint("half"), f"{s3}/best")
    monkeypatch.setattr(storage, "_upload", real_upload)
    left = objects(f"{s3}/best")
    assert f"best/{META_FILE}" not in left and f"best/{storage.INCOMPLETE}" in left  # loaders refuse it

    export_checkpoint(DirectoryCheckpoint("again"), f"{s3}/best")  # recognised as ours, replaced
    assert objects(f"{s3}/best") == {f"best/{name}": f"again:{name}".encode() for name in FILES}
    assert all(SECRET.encode() not in data for data in objects(s3).values())


def test_a_log_cut_short_by_a_killed_writer_reads_as_its_whole_lines(tmp_path: Path) -> None:
    from atflrec.tuning.trial import ATTEMPTS_FILE, REPORTS_FILE, read_attempts, read_reports

    run = tmp_path / "trial-a"
    run.mkdir()
    (run / ATTEMPTS_FILE).write_text('{"started": 1.0, "resumed_run": false}\n{"started": 2.0, "resu')
    (run / REPORTS_FILE).write_text('{"stage_index": 0, "epoch": 1, "auc": 0.5}\n'
                                    '{"stage_index": 0, "epoch": 1, "auc": 0.6}\n{"stage_index": 0, "ep')
    assert storage.read_json_lines(str(run / ATTEMPTS_FILE)) == [{"started": 1.0, "resumed_run": False}]
    assert storage.read_json_lines(str(run / "absent.jsonl")) == []
    assert read_attempts(str(tmp_path), "trial-a") == [{"started": 1.0, "resumed_run": False}]
    assert read_reports(str(tmp_path), "trial-a") == [{"stage_index": 0, "epoch": 1, "auc": 0.6}]  # the later wins
