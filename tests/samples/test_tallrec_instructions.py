"""TALLRec's two phrasings (book: '"<title>" written by <author>', movie: '"<title>"') on hand-written fixtures."""

import json
from pathlib import Path

import pytest

from atflrec.cli import main
from atflrec.samples import read_samples
from atflrec.samples.instructions import InstructionError, import_instructions, read_instructions

ASSETS = Path(__file__).parents[1] / "assets"
BOOK, MOVIE = ASSETS / "tallrec_book_fixture.json", ASSETS / "tallrec_movie_fixture.json"
LONG_BOOK = ("A Very Long Winter Evening: Being the Collected Letters of an Unhurried Lighthouse Keeper, "
             "Volume Two (Illustrated Edition) by H. T. Lindqvist")


def test_book_phrasing_targets_and_lists(tmp_path) -> None:
    assert main(["data", "import-instructions", str(BOOK), "--out", str(tmp_path / "out")]) == 0
    first, second, third = read_samples(tmp_path / "out", "train").to_pylist()
    # The doubly quoted target is the title and its author, whole (no 80-character cut).
    assert (first["item_id"], first["title"], first["label"]) == (LONG_BOOK, LONG_BOOK, 1)
    assert first["liked_ids"] == ["Tea Garden Stories by Mara Quill",
                                  "Maps, Rivers and Roads (Travel Notes) by Owen Park"]
    assert first["liked_titles"] == first["liked_ids"]
    assert first["disliked_ids"] == ["The Long Harbour by Ines Varga"]
    # Stray quotes and backslashes of the source stay verbatim; a comma in an author stays in it.
    assert second["liked_ids"] == []
    assert second["disliked_ids"] == ['Cooking for \\Two\\" People (Kitchen Series)" by Ada Brook',
                                     "Night Train by SMITH, JOHN"]
    assert (second["item_id"], second["label"]) == ('\\Quiet\\": Short Stories" by Lena Ho', 0)
    # preprocess_book.py's own form: no wrapping quotes, no spaces around 'written by'.
    assert (third["item_id"], third["liked_ids"], third["disliked_ids"]) == ("Harbour Lights by Tom Reyes",
                                                                             ["Night Train by Pat Lowe"], [])
    for row in (first, second, third):
        assert not any("written by" in i for i in [row["item_id"], *row["liked_ids"], *row["disliked_ids"]])


def test_movie_phrasing_targets_and_lists() -> None:
    first, second, third = read_instructions(MOVIE)
    assert (first["item_id"], first["label"]) == ("Lantern Harbour (1999)", 1)
    assert first["liked_ids"] == ["Blue Summer (1987)", "Quiet Roads, The (1994)"]
    assert first["disliked_ids"] == ["Paper Moonlight (1973)"]
    # Quotes inside a title (unescaped) stay in it; an empty list is fine.
    assert (second["item_id"], second["liked_ids"], second["disliked_ids"]) == (
        '"Late Show" Special, The (1990)', [], ["Blue Summer (1987)"])
    assert third["item_id"] == ("Open Water Crossing: A Documentary of Forty Days at Sea Without a Map or a Compass"
                                " (2003)")
    assert third["liked_ids"] == ["Written Words (2001)"]


def _one(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.json"
    good = {"input": 'User Preference: \nUser Unpreference: \nthe target movie "ok"', "output": "No."}
    path.write_text(json.dumps([good, {"input": text, "output": "Yes."}]))
    return path


@pytest.mark.parametrize(("text", "message"), [
    # a book target with no author, and one with no title quotes
    ('User Preference: \nUser Unpreference: \ntarget book ""T" written by "?', "mentions 'written by'"),
    ('User Preference: \nUser Unpreference: \ntarget book T" written by A?', "mentions 'written by'"),
    # a target that is neither a quoted title nor a book item
    ('User Preference: \nUser Unpreference: \ntarget "T" (1999)?', "neither TALLRec phrasing"),
    # book target, movie-style lists (no authors)
    ('User Preference: "A"\nUser Unpreference: \ntarget book ""T" written by W"?',
     r"User Preference \(book phrasing\)"),
    # movie target, book-style lists
    ('User Preference: \nUser Unpreference: "A" written by W\ntarget movie "T"?',
     r"User Unpreference \(movie phrasing\)"),
    # book list items not joined by ', '
    ('User Preference: "A" written by W; "B" written by V\nUser Unpreference: \ntarget book ""T" written by W"?',
     r"User Preference \(book phrasing\)"),
    ('User Preference: \nUser Preference: \nUser Unpreference: \ntarget movie "T"?', "more than one"),
])
def test_records_in_neither_phrasing_are_named(tmp_path, text, message) -> None:
    with pytest.raises(InstructionError, match=f"record 1: .*{message}"):
        import_instructions(_one(tmp_path, text), tmp_path / "out")
