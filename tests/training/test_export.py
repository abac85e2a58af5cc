"""#18 finding 5: exporting a checkpoint never deletes a directory that is not ours and never
leaves a half-written artifact (``--out .`` wiped the working directory at the end of training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atflrec.model.artifact import META_FILE
from atflrec.training.distributed import ExportError, check_export_target, export_checkpoint


class FakeCheckpoint:
    """Writes an artifact-like directory; ``fail_after`` files, then dies like a killed copy."""

    def __init__(self, marker: str, fail_after: int | None = None) -> None:
        self.marker, self.fail_after = marker, fail_after

    def to_directory(self, path: str) -> str:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for n, name in enumerate([META_FILE, "encoder.safetensors", "adapters.bin"]):
            if self.fail_after is not None and n >= self.fail_after:
                raise KeyboardInterrupt("killed mid-copy")
            (out / name).write_text(f"{self.marker}:{name}")
        return path


def test_out_dot_or_a_parent_of_the_working_directory_is_refused(tmp_path, monkeypatch) -> None:
    work = tmp_path / "project"
    (work / "src").mkdir(parents=True)
    (work / "notes.txt").write_text("keep me")
    monkeypatch.chdir(work / "src")
    for out in (".", "..", str(work)):
        with pytest.raises(ExportError, match="working directory"):
            export_checkpoint(FakeCheckpoint("new"), out)
    assert (work / "notes.txt").read_text() == "keep me"


def test_a_non_empty_directory_that_is_not_an_artifact_is_refused(tmp_path) -> None:
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not an atflrec artifact"):
        export_checkpoint(FakeCheckpoint("new"), str(foreign))
    with pytest.raises(ExportError):
        check_export_target(str(foreign / "thesis.tex"))
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_an_earlier_export_or_an_empty_directory_is_replaced_whole(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    export_checkpoint(FakeCheckpoint("one"), str(tmp_path / "empty"))
    assert (tmp_path / "empty" / META_FILE).read_text() == f"one:{META_FILE}"
    out = tmp_path / "best"
    export_checkpoint(FakeCheckpoint("one"), str(out))
    (out / "stale.txt").write_text("from the first export")
    export_checkpoint(FakeCheckpoint("two"), str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted([META_FILE, "encoder.safetensors", "adapters.bin"])
    assert (out / "adapters.bin").read_text() == "two:adapters.bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "empty"]  # nothing staged is left


def test_a_kill_mid_copy_leaves_the_previous_export_intact(tmp_path) -> None:
    out = tmp_path / "best"
    export_checkpoint(FakeCheckpoint("good"), str(out))
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(FakeCheckpoint("half", fail_after=2), str(out))
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        name: f"good:{name}" for name in [META_FILE, "encoder.safetensors", "adapters.bin"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
