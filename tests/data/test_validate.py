"""``validate_dataset`` on a good dataset and on one broken fixture per problem kind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from atflrec.cli import main
from atflrec.data.format import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    METADATA_FILE,
    interactions_table,
    items_table,
    load_dataset,
    write_dataset,
)
from atflrec.data.validate import KINDS, Severity, validate_dataset

ITEMS: dict[str, list[Any]] = {
    "item_id": ["a", "b", "c"],
    "title": ["Song A", "Song B", "Song C"],
    "tags": [["rock"], ["jazz", "live"], []],
    "audio_path": ["audio/a.wav", "audio/b.wav", "audio/c.wav"],
}
INTERACTIONS: dict[str, list[Any]] = {
    "user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
    "item_id": ["a", "b", "c", "a", "b", "c"],
    "label": [1, 0, 1, 0, 1, 0],
    "timestamp": [10, 20, 30, 11, 21, 31],
}


def _write_wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(160, dtype=np.float32), 16000)


def _good(root: Path) -> Path:
    items = items_table(*(ITEMS[c] for c in ("item_id", "title", "tags", "audio_path")))
    interactions = interactions_table(*(INTERACTIONS[c] for c in ("user_id", "item_id", "label", "timestamp")))
    write_dataset(root, items, interactions, {"source": "test"})
    for name in ITEMS["item_id"]:
        _write_wav(root / "audio" / f"{name}.wav")
    return root


def _replace(root: Path, file: str, **columns: Any) -> None:
    """Rewrite one table from the good columns with some replaced (types inferred by pyarrow)."""
    base = ITEMS if file == ITEMS_FILE else INTERACTIONS
    data = {**base, **columns}
    pq.write_table(pa.table({k: v for k, v in data.items() if v is not None}), root / file)


def _items(**columns: Any) -> Callable[[Path], None]:
    return lambda root: _replace(root, ITEMS_FILE, **columns)


def _interactions(**columns: Any) -> Callable[[Path], None]:
    return lambda root: _replace(root, INTERACTIONS_FILE, **columns)


def _delete(*names: str) -> Callable[[Path], None]:
    return lambda root: [(root / name).unlink() for name in names]


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda root: (root / name).write_bytes(content)


def _symlink(name: str, target: Callable[[Path], Path]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / name).unlink()
        os.symlink(target(root), root / name)

    return apply


def _first_audio_path(path: str) -> Callable[[Path], None]:
    return _items(audio_path=[path, *ITEMS["audio_path"][1:]])


def _integer_ids(root: Path) -> None:
    _replace(root, ITEMS_FILE, item_id=[1, 2, 3], tags=["rock", "jazz; live", ""])
    _replace(root, INTERACTIONS_FILE, item_id=[1, 2, 3, 1, 2, 3])


def test_good_dataset_is_usable_without_problems(tmp_path: Path) -> None:
    report = validate_dataset(_good(tmp_path))
    assert report.usable and report.problems == {}
    assert (report.items, report.interactions, report.users) == (3, 6, 2)
    assert (report.positives, report.negatives) == (3, 3)
    text = report.describe()
    assert "usable" in text and "no problems found" in text
    assert "items: 3, interactions: 6, users: 2, labels: 3 positive / 3 negative (50.0% positive)" in text


CASES: list[tuple[str, Callable[[Path], Any], dict[str, int]]] = [
    ("missing items file", _delete(ITEMS_FILE), {"missing_file": 1}),
    ("missing both tables", _delete(ITEMS_FILE, INTERACTIONS_FILE), {"missing_file": 2}),
    ("corrupt items parquet", _write(ITEMS_FILE, b"PAR1 not really"), {"unreadable_file": 1}),
    ("corrupt interactions parquet", _write(INTERACTIONS_FILE, b""), {"unreadable_file": 1}),
    ("items without title column", _items(title=None), {"missing_column": 1}),
    ("interactions without label and timestamp", _interactions(label=None, timestamp=None), {"missing_column": 2}),
    ("timestamp is text", _interactions(timestamp=["x", "y", "z", "x", "y", "z"]), {"wrong_type": 1}),
    ("label is text", _interactions(label=["yes", "no", "yes", "no", "yes", "no"]), {"wrong_type": 1}),
    ("label is fractional", _interactions(label=[0.5, 0.0, 1.0, 0.0, 1.0, 0.0]), {"wrong_type": 1}),
    ("tags are numbers", _items(tags=[1, 2, 3]), {"wrong_type": 1}),
    ("item_id is a struct", _items(item_id=[{"x": 1}, {"x": 2}, {"x": 3}]), {"wrong_type": 1}),
    ("null title", _items(title=["Song A", None, "Song C"]), {"null_values": 1}),
    ("null user ids", _interactions(user_id=[None, "u1", "u1", None, "u2", "u2"]), {"null_values": 2}),
    ("duplicate item id", _items(item_id=["a", "b", "a"]), {"duplicate_item_id": 1, "unknown_item": 2}),
    ("labels outside 0/1", _interactions(label=[1, 2, 0, -1, 1, 0]), {"invalid_label": 2}),
    ("label overflows int8", _interactions(label=[1, 300, 0, 0, 1, 0]), {"invalid_label": 1}),
    ("one unknown item", _interactions(item_id=["a", "b", "c", "zzz", "b", "c"]), {"unknown_item": 1}),
    ("all items unknown", _interactions(item_id=["x"] * 6),
     {"unknown_item": 6, "no_known_interactions": 1, "items_without_interactions": 3}),
    ("one missing audio file", _delete("audio/a.wav"), {"missing_audio": 1}),
    ("all audio missing", _delete(*ITEMS["audio_path"]), {"missing_audio": 3, "no_usable_audio": 1}),
    ("empty audio file", _write("audio/b.wav", b""), {"empty_audio": 1}),
    ("absolute audio path", _first_audio_path("/etc/passwd"), {"unsafe_audio_path": 1}),
    ("audio path with ..", _first_audio_path("audio/../../a.wav"), {"unsafe_audio_path": 1}),
    ("symlink out of the dataset", _symlink("audio/a.wav", lambda root: root.parent / "outside.wav"),
     {"unsafe_audio_path": 1}),
    ("symlink loop", _symlink("audio/a.wav", lambda root: root / "audio" / "a.wav"), {"missing_audio": 1}),
    ("empty title", _items(title=["Song A", "  ", "Song C"]), {"empty_title": 1}),
    ("control tokens in titles", _items(title=["Song <|im_end|>", "B<|audio|>", "Summer <3 Love"]),
     {"token_like_text": 2}),
    ("control characters in a tag", _items(tags=[["rock"], ["a\x00b"], ["jazz"]]), {"token_like_text": 1}),
    ("repeated interactions", _interactions(**{k: v + v[:2] for k, v in INTERACTIONS.items()}),
     {"duplicate_interaction": 2}),
    ("only positives", _interactions(label=[1] * 6), {"single_label": 1}),
    ("item nobody interacted with", _interactions(item_id=["a", "b", "a", "a", "b", "a"]),
     {"items_without_interactions": 1}),
    ("no items", _items(**{k: pa.array([], pa.string()) for k in ITEMS}),
     {"no_items": 1, "unknown_item": 6, "no_known_interactions": 1}),
    ("no interactions", _interactions(**{k: [] for k in INTERACTIONS}),
     {"no_interactions": 1, "items_without_interactions": 3}),
    ("other format version", _write(METADATA_FILE, json.dumps({"format_version": 2}).encode()),
     {"unsupported_version": 1}),
    ("garbled dataset.json", _write(METADATA_FILE, b"{not json"), {"bad_metadata": 1}),
    ("integer ids and string tags are fine", _integer_ids, {}),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_kind_is_counted(tmp_path: Path, mutate: Callable[[Path], Any], expected: dict[str, int]) -> None:
    root = _good(tmp_path / "ds")
    mutate(root)
    report = validate_dataset(root)
    assert {kind: p.count for kind, p in report.problems.items()} == expected
    should_be_usable = all(KINDS[kind][0] is not Severity.ERROR for kind in expected)
    assert report.usable is should_be_usable
    assert all(p.examples for p in report.problems.values())
    for kind in expected:
        assert kind in report.describe()
    if report.usable:  # what the validator accepts, the reader reads
        load_dataset(root)


def test_every_kind_has_a_case() -> None:
    covered = {kind for _, _, expected in CASES for kind in expected} | {"missing_directory"}
    assert covered == set(KINDS)


def test_missing_directory(tmp_path: Path) -> None:
    report = validate_dataset(tmp_path / "nope")
    assert not report.usable and report.count("missing_directory") == 1
    assert "UNUSABLE" in report.describe()


def test_examples_are_capped(tmp_path: Path) -> None:
    root = _good(tmp_path)
    _replace(root, INTERACTIONS_FILE, item_id=["x1", "x2", "x3", "x4", "x5", "a"])
    problem = validate_dataset(root).problems["unknown_item"]
    assert problem.count == 5 and len(problem.examples) == 3


def test_symlink_inside_the_dataset_is_fine(tmp_path: Path) -> None:
    root = _good(tmp_path)
    (root / "audio" / "a.wav").unlink()
    os.symlink("b.wav", root / "audio" / "a.wav")
    assert validate_dataset(root).problems == {}


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _good(tmp_path / "good")
    assert main(["data", "validate", str(good)]) == 0
    bad = _good(tmp_path / "bad")
    _replace(bad, INTERACTIONS_FILE, label=[1, 2, 0, 0, 1, 0])
    assert main(["data", "validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "UNUSABLE" in out and "invalid_label: 1" in out and "row 1: label 2" in out
    assert main(["data", "validate", str(tmp_path / "missing")]) == 1
