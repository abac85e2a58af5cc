"""``atflrec data validate``: check a dataset directory against format v1 without ever crashing.

Every problem found is counted under a *kind*, with a few examples, and each kind has a fixed
severity:

error (the dataset is unusable; ``usable`` is False and the CLI exits 1)
    The directory or a table is missing or unreadable; a required column is missing, holds nulls
    or cannot be read as its v1 type; an item id is repeated (which row is right is unknowable);
    a label is not 0 or 1 (labels are the training target); an audio path escapes the directory
    (absolute, ``..``, symlink out: never an accident, so the dataset is refused rather than
    quarantined); ``dataset.json`` declares another format version; there are no items, no
    interactions, no interaction naming a known item, or no item with a usable audio file.
warning (usable; later stages skip or quarantine the rows concerned)
    Some interactions name unknown items; some audio files are missing or empty (the features
    stage quarantines them); a title is empty; a (user, item, timestamp) row is repeated; all labels
    are the same (training works, AUC is undefined); ``dataset.json`` is unreadable; a title or tag
    holds text that looks like a control token or control characters (prompts escape it: see
    :func:`atflrec.prompts.item_text`).
info
    Items that no interaction names (they can still serve as candidates).

A dataset reported usable is one that :func:`atflrec.data.format.load_dataset` reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from atflrec.data.format import (
    FORMAT_VERSION,
    INTERACTIONS_FILE,
    ITEMS_FILE,
    METADATA_FILE,
    REQUIRED_INTERACTION_COLUMNS,
    REQUIRED_ITEM_COLUMNS,
    UnsafeAudioPath,
    is_text_type,
    resolve_audio_path,
)

MAX_EXAMPLES = 3


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


# kind -> (severity, what one counted instance means)
KINDS: dict[str, tuple[Severity, str]] = {
    "missing_directory": (Severity.ERROR, "dataset directory does not exist"),
    "missing_file": (Severity.ERROR, "required file is missing"),
    "unreadable_file": (Severity.ERROR, "file is not readable as Parquet"),
    "missing_column": (Severity.ERROR, "required column is missing"),
    "wrong_type": (Severity.ERROR, "column cannot be read as its v1 type"),
    "null_values": (Severity.ERROR, "null value in a required column"),
    "duplicate_item_id": (Severity.ERROR, "item row repeats an item id seen before"),
    "invalid_label": (Severity.ERROR, "label is not 0 or 1"),
    "unsafe_audio_path": (Severity.ERROR, "audio path escapes the dataset directory"),
    "unsupported_version": (Severity.ERROR, f"dataset.json declares a format other than v{FORMAT_VERSION}"),
    "no_items": (Severity.ERROR, "items.parquet has no rows"),
    "no_interactions": (Severity.ERROR, "interactions.parquet has no rows"),
    "no_known_interactions": (Severity.ERROR, "every interaction names an unknown item"),
    "no_usable_audio": (Severity.ERROR, "no item has a usable audio file"),
    "unknown_item": (Severity.WARNING, "interaction names an item not in items.parquet"),
    "missing_audio": (Severity.WARNING, "audio file does not exist"),
    "empty_audio": (Severity.WARNING, "audio file is empty (0 bytes)"),
    "empty_title": (Severity.WARNING, "item title is empty"),
    "token_like_text": (Severity.WARNING, "title or tag looks like a control token (e.g. <|im_end|>) or holds "
                        "control characters; prompts escape it, so it is read as plain text"),
    "duplicate_interaction": (Severity.WARNING, "interaction repeats a (user_id, item_id, timestamp) seen before"),
    "single_label": (Severity.WARNING, "all labels are the same, so AUC is undefined"),
    "bad_metadata": (Severity.WARNING, "dataset.json is unreadable or lacks format_version"),
    "items_without_interactions": (Severity.INFO, "item named by no interaction"),
}


@dataclass
class Problem:
    kind: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def severity(self) -> Severity:
        return KINDS[self.kind][0]

    @property
    def description(self) -> str:
        return KINDS[self.kind][1]


@dataclass
class ValidationReport:
    """Problems by kind plus dataset totals (None where a table could not be read)."""

    root: Path
    problems: dict[str, Problem] = field(default_factory=dict)
    items: int | None = None
    interactions: int | None = None
    users: int | None = None
    positives: int | None = None
    negatives: int | None = None

    def add(self, kind: str, count: int, examples: Iterable[str] = ()) -> None:
        """Count ``count`` instances of ``kind``, keeping the first few examples."""
        if count <= 0:
            return
        problem = self.problems.setdefault(kind, Problem(kind))
        problem.count += count
        problem.examples.extend(islice(examples, max(MAX_EXAMPLES - len(problem.examples), 0)))

    def count(self, kind: str) -> int:
        return self.problems[kind].count if kind in self.problems else 0

    def by_severity(self, severity: Severity) -> list[Problem]:
        return [p for p in self.problems.values() if p.severity is severity]

    @property
    def usable(self) -> bool:
        return not self.by_severity(Severity.ERROR)

    def describe(self) -> str:
        errors, warnings = len(self.by_severity(Severity.ERROR)), len(self.by_severity(Severity.WARNING))
        verdict = "usable" if self.usable else "UNUSABLE"
        lines = [f"dataset {self.root}: {verdict} ({errors} error kind(s), {warnings} warning kind(s))"]
        lines.append("  " + self._totals())
        if not self.problems:
            lines.append("  no problems found")
        order = [Severity.ERROR, Severity.WARNING, Severity.INFO]
        for problem in sorted(self.problems.values(), key=lambda p: (order.index(p.severity), p.kind)):
            lines.append(f"  {problem.severity.value:<7} {problem.kind}: {problem.count} ({problem.description})")
            lines.extend(f"            e.g. {example}" for example in problem.examples)
        return "\n".join(lines)

    def _totals(self) -> str:
        def shown(value: int | None) -> str:
            return "?" if value is None else str(value)

        text = f"items: {shown(self.items)}, interactions: {shown(self.interactions)}, users: {shown(self.users)}"
        if self.positives is not None and self.negatives is not None:
            labelled = self.positives + self.negatives
            share = f" ({100 * self.positives / labelled:.1f}% positive)" if labelled else ""
            text += f", labels: {self.positives} positive / {self.negatives} negative{share}"
        return text


def validate_dataset(path: str | Path) -> ValidationReport:
    """Check the dataset at ``path``; problems are reported, never raised."""
    root = Path(path)
    report = ValidationReport(root=root)
    if not root.is_dir():
        report.add("missing_directory", 1, [f"{root} is not a directory"])
        return report
    _check_metadata(root / METADATA_FILE, report)
    items = _read(root / ITEMS_FILE, REQUIRED_ITEM_COLUMNS, report)
    interactions = _read(root / INTERACTIONS_FILE, REQUIRED_INTERACTION_COLUMNS, report)
    known_items = _check_items(root, items, report) if items is not None else None
    if interactions is not None:
        _check_interactions(interactions, known_items, report)
    return report


# --- reading --------------------------------------------------------------------------------

def _check_metadata(path: Path, report: ValidationReport) -> None:
    if not path.exists():
        return  # dataset.json is optional
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.add("bad_metadata", 1, [f"{path.name}: {exc}"])
        return
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version is None:
        report.add("bad_metadata", 1, [f"{path.name}: no format_version"])
    elif version != FORMAT_VERSION:
        report.add("unsupported_version", 1, [f"{path.name}: format_version {version!r}"])


def _read(path: Path, required: tuple[str, ...], report: ValidationReport) -> pa.Table | None:
    """The table at ``path`` (possibly lacking columns, which are reported), or None if unreadable."""
    if not path.exists():
        report.add("missing_file", 1, [path.name])
        return None
    if not path.is_file():
        report.add("unreadable_file", 1, [f"{path.name} is not a file"])
        return None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        report.add("unreadable_file", 1, [f"{path.name}: {exc}"])
        return None
    missing = [column for column in required if column not in table.column_names]
    report.add("missing_column", len(missing), [f"{path.name}: {column}" for column in missing])
    return table


def _cast(
    table: pa.Table, name: str, target: pa.DataType, report: ValidationReport, file: str
) -> pa.ChunkedArray | None:
    """Column ``name`` cast to ``target``, or None (reported) when it is missing or will not cast."""
    if name not in table.column_names:
        return None
    column = table.column(name)
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        report.add("wrong_type", 1, [f"{file}: {name} is {column.type}, expected {target}"])
        return None


def _values(column: pa.ChunkedArray | None, name: str, report: ValidationReport, file: str) -> list[Any] | None:
    """Python values of a cast column; nulls are reported (and stay None in the list)."""
    if column is None:
        return None
    values = column.to_pylist()
    if column.null_count:
        rows = [row for row, value in enumerate(values) if value is None]
        report.add("null_values", len(rows), (f"{file} row {row}: {name} is null" for row in rows))
    return values


def _strings(table: pa.Table, name: str, report: ValidationReport, file: str) -> list[str | None] | None:
    return _values(_cast(table, name, pa.string(), report, file), name, report, file)


# --- items ----------------------------------------------------------------------------------

def _check_items(root: Path, items: pa.Table, report: ValidationReport) -> set[str] | None:
    """Check items.parquet; return its item ids (None when they cannot be read)."""
    report.items = items.num_rows
    report.add("no_items", int(items.num_rows == 0), [ITEMS_FILE])
    ids = _strings(items, "item_id", report, ITEMS_FILE)
    titles = _strings(items, "title", report, ITEMS_FILE)
    paths = _strings(items, "audio_path", report, ITEMS_FILE)
    _check_tags(items, report)
    if ids is not None:
        _check_duplicate_ids(ids, report)
    if titles is not None:
        empty = [row for row, title in enumerate(titles) if title is not None and not title.strip()]
        report.add("empty_title", len(empty), (f"{ITEMS_FILE} row {row}: item {_at(ids, row)!r}" for row in empty))
        _check_token_like(titles, ids, "title", report)
    if paths is not None and items.num_rows:
        usable = sum(_check_audio(root, path, row, report) for row, path in enumerate(paths) if path is not None)
        report.add("no_usable_audio", int(usable == 0), [f"none of {items.num_rows} audio paths is usable"])
    return None if ids is None else {i for i in ids if i is not None}


def _check_tags(items: pa.Table, report: ValidationReport) -> None:
    """Tags may be a string (comma/semicolon separated) or a list of strings."""
    if "tags" not in items.column_names:
        return
    kind = items.schema.field("tags").type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        target = pa.list_(pa.string())
    elif is_text_type(kind):
        target = pa.string()
    else:
        report.add("wrong_type", 1, [f"{ITEMS_FILE}: tags is {kind}, expected string or list<string>"])
        return
    tags = _values(_cast(items, "tags", target, report, ITEMS_FILE), "tags", report, ITEMS_FILE)
    if tags is not None:
        joined = [" ".join(t) if isinstance(t, list) else t for t in tags]
        _check_token_like([t if t is None else str(t) for t in joined], None, "tags", report)


def _check_token_like(texts: list[str | None], ids: list[str | None] | None, column: str,
                      report: ValidationReport) -> None:
    from atflrec.prompts import TOKEN_LIKE

    rows = [row for row, text in enumerate(texts) if text and TOKEN_LIKE.search(text)]
    report.add("token_like_text", len(rows), (f"{ITEMS_FILE} row {row} {column}: {texts[row][:60]!r}" for row in rows))


def _check_duplicate_ids(ids: list[str | None], report: ValidationReport) -> None:
    seen: set[str] = set()
    repeats = []
    for row, item_id in enumerate(ids):
        if item_id is None:
            continue
        if item_id in seen:
            repeats.append(row)
        seen.add(item_id)
    report.add("duplicate_item_id", len(repeats), (f"{ITEMS_FILE} row {row}: item {ids[row]!r}" for row in repeats))


def _check_audio(root: Path, relative: str, row: int, report: ValidationReport) -> bool:
    """Report what is wrong with one item's audio file; True when it is usable."""
    example = [f"{ITEMS_FILE} row {row}: {relative!r}"]
    try:
        target = resolve_audio_path(root, relative)
    except UnsafeAudioPath as exc:
        report.add("unsafe_audio_path", 1, [f"{ITEMS_FILE} row {row}: {exc}"])
        return False
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, NUL bytes
        report.add("missing_audio", 1, [f"{ITEMS_FILE} row {row}: {relative!r} cannot be resolved ({exc})"])
        return False
    try:
        size = target.stat().st_size if target.is_file() else None
    except OSError:
        size = None
    if size is None:
        report.add("missing_audio", 1, example)
        return False
    if size == 0:
        report.add("empty_audio", 1, example)
        return False
    return True


# --- interactions ---------------------------------------------------------------------------

def _check_interactions(table: pa.Table, known_items: set[str] | None, report: ValidationReport) -> None:
    file = INTERACTIONS_FILE
    report.interactions = table.num_rows
    report.add("no_interactions", int(table.num_rows == 0), [file])
    users = _strings(table, "user_id", report, file)
    items = _strings(table, "item_id", report, file)
    labels = _labels(table, report)
    timestamps = _values(_cast(table, "timestamp", pa.int64(), report, file), "timestamp", report, file)
    if users is not None:
        report.users = len({u for u in users if u is not None})
    if labels is not None:
        report.positives = sum(1 for label in labels if label == 1)
        report.negatives = sum(1 for label in labels if label == 0)
        distinct = {label for label in labels if label is not None}
        if len(distinct) == 1:
            report.add("single_label", 1, [f"every label is {distinct.pop()}"])
    if items is not None and known_items is not None:
        _check_item_references(items, known_items, report)
    if users is not None and items is not None and timestamps is not None:
        _check_duplicate_interactions(list(zip(users, items, timestamps)), report)


def _labels(table: pa.Table, report: ValidationReport) -> list[int | None] | None:
    """Labels as integers; out-of-range integers are invalid labels, not a type error."""
    if "label" not in table.column_names:
        return None
    column = table.column("label")
    if not pa.types.is_integer(column.type):
        column = _cast(table, "label", pa.int64(), report, INTERACTIONS_FILE)
    labels = _values(column, "label", report, INTERACTIONS_FILE)
    if labels is not None:
        bad = [row for row, label in enumerate(labels) if label is not None and label not in (0, 1)]
        report.add("invalid_label", len(bad), (f"{INTERACTIONS_FILE} row {row}: label {labels[row]}" for row in bad))
    return labels


def _check_item_references(items: list[str | None], known: set[str], report: ValidationReport) -> None:
    named = [(row, item) for row, item in enumerate(items) if item is not None]
    unknown = [(row, item) for row, item in named if item not in known]
    report.add("unknown_item", len(unknown), (f"{INTERACTIONS_FILE} row {row}: item {item!r}" for row, item in unknown))
    if named and len(unknown) == len(named):
        report.add("no_known_interactions", 1, [f"all {len(named)} interactions"])
    unused = sorted(known - {item for _, item in named})
    report.add("items_without_interactions", len(unused), (f"item {item!r}" for item in unused))


def _check_duplicate_interactions(rows: list[tuple[Any, Any, Any]], report: ValidationReport) -> None:
    counts = Counter(row for row in rows if None not in row)
    repeats = sum(n - 1 for n in counts.values())
    examples = (f"user {u!r}, item {i!r}, timestamp {t} appears {n} times" for (u, i, t), n in counts.items() if n > 1)
    report.add("duplicate_interaction", repeats, examples)


def _at(values: list[Any] | None, row: int) -> Any:
    return None if values is None else values[row]
