"""Import Alpaca-style instruction JSON (TALLRec's data files) as text-only samples.

Each record has ``instruction``, ``input`` and ``output``. The input has a line starting
``User Preference:`` (liked items), one starting ``User Unpreference:`` (disliked items) and,
in the remaining text, the target item; the output is "Yes." or "No.". Two phrasings of an item
are read, the ones TALLRec's files use:

movie   a double-quoted title: ``"Heat (1995)"``; lists are such titles joined by ``, ``; the
        target is the quoted title of the remaining text (``...the target movie "Heat (1995)"?``).
        A backslash-escaped quote (``\\"``) inside a title is unescaped.
book    a double-quoted title followed by its author: ``"Kiss the Girls" written by James
        Patterson``; lists are such items joined by ``, ``. TALLRec's Book files wrap the target
        in one more pair of quotes (``...the target book ""Friday" written by Robert
        Heinlein"?``); the unwrapped form is read too. Titles are kept verbatim, stray quotes and
        backslashes from the Book-Crossing source included (``The \\Death-Bed\\" Edition``): a
        list item's title ends at the first ``" written by``, the target's at the last.

Which phrasing a record uses is decided by its target; its preference lines must then be in the
same phrasing. A record whose target is in neither, or whose lists do not parse, is an
:class:`InstructionError` naming the record's index. Nothing is cut or truncated.

The records carry no ids, so an item's text stands in for its id: the title for the movie
phrasing, ``<title> by <author>`` for the book phrasing (Book-Crossing titles are not unique
across authors; author spellings are kept as given, so ``JAMES A. MICHENER`` and ``James A.
Michener`` stay two ids). That text is also the sample's title, so a prompt shows the author as
TALLRec's did. Each record is its own user (``<file stem>-<index>``); the rows are written as one
split of the sample format (:mod:`atflrec.samples.format`) and train the ``text_only`` strategy (no audio).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from atflrec.errors import UserError
from atflrec.samples.format import SAMPLE_SCHEMA, write_samples

_LIKED, _DISLIKED = "user preference:", "user unpreference:"
# One book item: title up to the first `" written by`, author up to the next `, "` or the end.
_BOOK_ITEM = re.compile(r'"(?P<title>.*?)"\s*written by\s*(?P<author>.*?)(?=,\s*"|$)', re.DOTALL)
_BOOK_SEPARATOR = re.compile(r",\s*")
# The target book: title up to the last `" written by` (greedy), author to the end.
_BOOK_TARGET = re.compile(r'"(?P<title>.*)"\s*written by\s*(?P<author>.*)', re.DOTALL)
_WRITTEN_BY = re.compile(r'"\s*written by')
# Movie list items are separated by `", "` (a quote escaped with a backslash does not close one).
_MOVIE_SEPARATOR = re.compile(r'(?<!\\)"\s*,\s*"')

BOOK, MOVIE = "book", "movie"


class InstructionError(UserError, ValueError):
    """A record that is not in the expected Alpaca layout; the message names the record."""


def book_item_id(title: str, author: str) -> str:
    """The id (and sample title) of a book-phrasing item."""
    return f"{title} by {author}"


def _unescape(title: str) -> str:
    return title.replace('\\"', '"')


def _book_list(text: str, where: str) -> list[str]:
    items: list[str] = []
    pos = 0
    while pos < len(text):
        if items:
            sep = _BOOK_SEPARATOR.match(text, pos)
            if sep is None:
                raise InstructionError(f"{where}: expected ', ' between books at {text[pos:pos + 40]!r}")
            pos = sep.end()
        match = _BOOK_ITEM.match(text, pos)
        if match is None:
            raise InstructionError(f'{where}: expected \'"<title>" written by <author>\' at {text[pos:pos + 40]!r}')
        author = match["author"].strip()
        if not author or _WRITTEN_BY.search(author):
            raise InstructionError(f"{where}: cannot tell the author from the next book in {text[pos:pos + 60]!r}")
        items.append(book_item_id(match["title"], author))
        pos = match.end()
    return items


def _movie_list(text: str, where: str) -> list[str]:
    if not text:
        return []
    if len(text) < 2 or not text.startswith('"') or not text.endswith('"') or text.endswith('\\"'):
        raise InstructionError(f"{where}: expected double-quoted titles joined by ', ', got {text[:60]!r}")
    return [_unescape(t) for t in _MOVIE_SEPARATOR.split(text[1:-1])]


def _target(rest: str, index: int) -> tuple[str, str]:
    """(phrasing, item id) of the target: the text from the first quote, less a trailing '?'."""
    start = rest.find('"')
    if start < 0:
        raise InstructionError(f"record {index}: no quoted target title outside the preference lines")
    text = rest[start:].strip().rstrip("?").rstrip()
    if _WRITTEN_BY.search(text):
        # TALLRec's Book files: ""Title" written by Author" -- one more pair of quotes around the item.
        wrapped = text[1:-1] if text.startswith('""') and text.endswith('"') else None
        for candidate in (wrapped, text):
            match = _BOOK_TARGET.fullmatch(candidate) if candidate is not None else None
            if match and match["author"].strip() and not match["author"].rstrip().endswith('"'):
                return BOOK, book_item_id(match["title"], match["author"].strip())
        raise InstructionError(
            f"record {index}: target {text[:80]!r} mentions 'written by' but is not '\"<title>\" written by <author>'"
        )
    if len(text) >= 2 and text.endswith('"') and not text.endswith('\\"'):
        title = _unescape(text[1:-1])
        if title.strip():
            return MOVIE, title
    raise InstructionError(
        f"record {index}: target {text[:80]!r} is in neither TALLRec phrasing "
        "('\"<title>\"' or '\"<title>\" written by <author>')"
    )


def parse_record(record: dict[str, Any], user_id: str, index: int) -> dict[str, Any]:
    """One Alpaca record → one sample row."""
    if (not isinstance(record, dict) or not isinstance(record.get("input"), str)
            or not isinstance(record.get("output"), str)):
        raise InstructionError(f"record {index}: needs string fields 'input' and 'output'")
    lists: dict[str, str] = {}
    rest: list[str] = []
    for line in record["input"].splitlines():
        stripped = line.strip()
        for key in (_LIKED, _DISLIKED):
            if stripped.lower().startswith(key):
                if key in lists:
                    raise InstructionError(f"record {index}: more than one '{key}' line")
                lists[key] = stripped[len(key):].strip()
                break
        else:
            rest.append(line)
    phrasing, target = _target("\n".join(rest), index)
    parse = _book_list if phrasing == BOOK else _movie_list
    liked = parse(lists.get(_LIKED, ""), f"record {index}: User Preference ({phrasing} phrasing)")
    disliked = parse(lists.get(_DISLIKED, ""), f"record {index}: User Unpreference ({phrasing} phrasing)")
    answer = record["output"].strip().rstrip(".").strip().lower()
    if answer not in ("yes", "no"):
        raise InstructionError(f"record {index}: output {record['output']!r} is neither 'Yes.' nor 'No.'")
    return {
        "sample_id": f"{user_id}#{index}",
        "user_id": user_id,
        "item_id": target,
        "title": target,
        "label": int(answer == "yes"),
        "timestamp": index,
        "liked_ids": liked,
        "liked_titles": liked,
        "disliked_ids": disliked,
        "disliked_titles": disliked,
    }


def read_instructions(path: str | Path) -> list[dict[str, Any]]:
    """The sample rows of the JSON list at ``path`` (one per record, in order)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InstructionError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(records, list):
        raise InstructionError(f"{path} must hold a JSON list of records, not {type(records).__name__}")
    return [parse_record(r, f"{path.stem}-{i}", i) for i, r in enumerate(records)]


def import_instructions(path: str | Path, out_dir: str | Path, split: str = "train") -> int:
    """Convert the JSON list at ``path`` into ``out_dir/<split>.parquet``; returns the sample count."""
    table = pa.Table.from_pylist(read_instructions(path), schema=SAMPLE_SCHEMA)
    write_samples(out_dir, {split: table}, {"source": str(path), "importer": "alpaca-instructions"})
    return table.num_rows
