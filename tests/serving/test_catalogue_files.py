"""#18 finding 7, without Ray: the cold-item directory is read robustly (a bad file is skipped and
reported, never fatal), deletes reach every replica, and uploads keep audio for every Mel-bin
count of the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atflrec.serving.catalogue import Catalogue, ItemExists, NotColdItem


def catalogue(items_dir: Path, served=(8,), store=(8, 16)) -> Catalogue:
    features = {n: {"a": np.zeros((4, n), np.float16)} for n in served}
    made = Catalogue({"a": "Song A"}, features, 0.5, items_dir, store)
    made.refresh()  # as Catalogue.load does
    return made


def feats(*counts: int) -> dict[int, np.ndarray]:
    return {n: np.full((3, n), 0.5, np.float16) for n in counts}


def test_a_corrupt_or_foreign_file_is_skipped_and_reported(tmp_path) -> None:
    one = catalogue(tmp_path)
    one.add("c1", "Cold One", [], feats(8, 16))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    other = catalogue(tmp_path)  # another replica starting now: was a crash before
    assert "c1" in other and other.cold_items == 1
    assert set(other.bad_items) == {"junk.parquet", "empty.parquet"}
    # A file holding another id, and one named like a dataset item, are refused too.
    (tmp_path / "c1.parquet").rename(tmp_path / "renamed.parquet")
    (tmp_path / "a.parquet").write_bytes((tmp_path / "renamed.parquet").read_bytes())
    fresh = catalogue(tmp_path)
    assert "renamed" not in fresh and fresh.titles["a"] == "Song A"
    assert {"renamed.parquet", "a.parquet"} <= set(fresh.bad_items)
    # Fixed files are picked up; removed bad files leave the report.
    (tmp_path / "junk.parquet").unlink()
    (tmp_path / "renamed.parquet").rename(tmp_path / "c1.parquet")
    fresh.refresh()
    assert "c1" in fresh and "junk.parquet" not in fresh.bad_items


def test_an_item_without_a_served_mel_count_is_reported_not_served_silently(tmp_path) -> None:
    old = catalogue(tmp_path, served=(8,), store=(8,))  # the store then had 8 bins only
    old.add("c8", "Only Eight", [], feats(8))
    newer = catalogue(tmp_path, served=(16,), store=(8, 16))
    assert "c8" not in newer and "16" in newer.bad_items["c8.parquet"]


def test_uploads_are_featurised_at_every_store_count(tmp_path) -> None:
    assert catalogue(tmp_path, served=(8,), store=(8, 16)).store_mels == [8, 16]


def test_delete_reaches_other_replicas_and_the_id_can_come_back(tmp_path) -> None:
    one, two = catalogue(tmp_path), catalogue(tmp_path)
    one.add("c1", "Cold", ["x"], feats(8, 16))
    two.refresh()
    assert "c1" in two
    with pytest.raises(ItemExists):
        two.add("c1", "Again", [], feats(8, 16))
    with pytest.raises(NotColdItem):
        one.delete("a")  # a dataset item
    with pytest.raises(NotColdItem):
        one.delete("nope")
    two.delete("c1")
    assert not (tmp_path / "c1.parquet").exists()
    one.refresh()
    assert "c1" not in one and "c1" not in one.features(8) and one.cold_items == 0
    two.add("c1", "Back", [], feats(8, 16))
    one.refresh()
    assert one.titles["c1"] == "Back"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging files left
