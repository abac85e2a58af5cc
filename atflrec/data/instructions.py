"""Import Alpaca-style instruction JSON (TALLRec's data files) as text-only samples.

Each record has ``instruction``, ``input`` and ``output``. The input lists quoted titles on a
line starting ``User Preference:`` (liked) and one starting ``User Unpreference:`` (disliked);
the target is the last quoted title of the remaining text; the output is "Yes." or "No.".
The records carry no ids, so a title stands in for its item id and each record is its own user
(``<file stem>-<index>``); they are written as one split of the sample format
(:mod:`atflrec.samples`) and train the ``text_only`` strategy (no audio).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from atflrec.errors import UserError
from atflrec.samples import SAMPLE_SCHEMA, write_samples

# A double-quoted title; backslash escapes allowed inside.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_LIKED, _DISLIKED = "user preference:", "user unpreference:"


class InstructionError(UserError, ValueError):
    """A record that is not in the expected Alpaca layout; the message names the record."""


def _titles(text: str) -> list[str]:
    return [m.replace('\\"', '"') for m in _QUOTED.findall(text)]


def parse_record(record: dict[str, Any], user_id: str, index: int) -> dict[str, Any]:
    """One Alpaca record → one sample row."""
    if not isinstance(record, dict) or not isinstance(record.get("input"), str) or not isinstance(record.get("output"), str):
        raise InstructionError(f"record {index}: needs string fields 'input' and 'output'")
    liked: list[str] = []
    disliked: list[str] = []
    rest: list[str] = []
    for line in record["input"].splitlines():
        lowered = line.strip().lower()
        if lowered.startswith(_LIKED):
            liked += _titles(line)
        elif lowered.startswith(_DISLIKED):
            disliked += _titles(line)
        else:
            rest.append(line)
    targets = _titles("\n".join(rest))
    if not targets:
        raise InstructionError(f"record {index}: no quoted target title outside the preference lines")
    answer = record["output"].strip().rstrip(".").strip().lower()
    if answer not in ("yes", "no"):
        raise InstructionError(f"record {index}: output {record['output']!r} is neither 'Yes.' nor 'No.'")
    return {
        "sample_id": f"{user_id}#{index}",
        "user_id": user_id,
        "item_id": targets[-1],
        "title": targets[-1],
        "label": int(answer == "yes"),
        "timestamp": index,
        "liked_ids": liked,
        "liked_titles": liked,
        "disliked_ids": disliked,
        "disliked_titles": disliked,
    }


def import_instructions(path: str | Path, out_dir: str | Path, split: str = "train") -> int:
    """Convert the JSON list at ``path`` into ``out_dir/<split>.parquet``; returns the sample count."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InstructionError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(records, list):
        raise InstructionError(f"{path} must hold a JSON list of records, not {type(records).__name__}")
    rows = [parse_record(r, f"{path.stem}-{i}", i) for i, r in enumerate(records)]
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    write_samples(out_dir, {split: table}, {"source": str(path), "importer": "alpaca-instructions"})
    return table.num_rows
