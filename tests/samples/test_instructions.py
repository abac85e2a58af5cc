import json
from pathlib import Path

import pytest

from atflrec.samples import read_samples
from atflrec.samples.instructions import InstructionError, import_instructions

FIXTURE = Path(__file__).parents[1] / "assets" / "alpaca_fixture.json"


def test_imports_titles_label_and_target(tmp_path) -> None:
    assert import_instructions(FIXTURE, tmp_path / "out") == 2
    first, second = read_samples(tmp_path / "out", "train").to_pylist()
    assert first["liked_titles"] == ["Alien (1979)", "Heat (1995)"]
    assert first["disliked_titles"] == ["Babe (1995)"]
    assert (first["title"], first["label"]) == ("Twister (1996)", 1)
    # Commas inside quotes stay in the title; escaped quotes are unescaped; empty lists are fine.
    assert second["liked_titles"] == ["Casablanca, the Director's Cut"]
    assert second["disliked_titles"] == []
    assert (second["title"], second["label"]) == ('Say "Anything"', 0)
    assert json.loads((tmp_path / "out" / "samples.json").read_text())["counts"] == {"train": 2}


def test_second_split_keeps_the_first_ones_count(tmp_path) -> None:
    import_instructions(FIXTURE, tmp_path / "out", split="train")
    import_instructions(FIXTURE, tmp_path / "out", split="test")
    assert json.loads((tmp_path / "out" / "samples.json").read_text())["counts"] == {"train": 2, "test": 2}


@pytest.mark.parametrize(("record", "message"), [
    ({"input": "User Preference: \"A\"", "output": "Yes."}, "no quoted target"),
    ({"input": "target \"A\"", "output": "Maybe."}, "neither"),
    ({"output": "Yes."}, "input"),
])
def test_bad_records_name_their_index(tmp_path, record, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"input": "\"ok\"", "output": "No."}, record]))
    with pytest.raises(InstructionError, match=f"record 1: .*{message}"):
        import_instructions(path, tmp_path / "out")
