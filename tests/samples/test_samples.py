from pathlib import Path

import numpy as np
import pytest

from atflrec.config import build_config
from atflrec.data.format import interactions_table, items_table, load_dataset, write_dataset
from atflrec.samples import SampleConfig, SampleError, build_samples, few_shot, make_samples, read_samples


@pytest.fixture
def dataset(tmp_path: Path):
    rng = np.random.default_rng(1)
    items = [f"i{n:02d}" for n in range(30)]
    users, item_ids, labels, stamps = [], [], [], []
    for u in range(8):
        for t, item in enumerate(rng.choice(items, size=12, replace=False)):
            users.append(f"u{u}")
            item_ids.append(str(item))
            labels.append(int(rng.integers(2)))
            stamps.append(1000 - 10 * t if u == 0 else 100 * t)  # user 0's file order is reversed in time
    write_dataset(tmp_path / "ds",
                  items_table(items, [f"Title {i}" for i in items], [[]] * 30, [f"{i}.wav" for i in items]),
                  interactions_table(users, item_ids, labels, stamps))
    return load_dataset(tmp_path / "ds")


def _history_ids(table) -> set[str]:
    return {i for column in ("liked_ids", "disliked_ids") for row in table.column(column).to_pylist() for i in row}


def test_cold_items_never_occur_in_warm_splits(dataset) -> None:
    config = SampleConfig(cold_item_fraction=0.2, seed=3)
    splits = build_samples(dataset, config)
    cold_targets = set(splits["cold"].column("item_id").to_pylist())
    assert cold_targets
    for split in ("train", "val", "test", "cold"):
        table = splits[split]
        assert not cold_targets & _history_ids(table), split  # no history holds a cold item
        if split != "cold":
            assert not cold_targets & set(table.column("item_id").to_pylist()), split


def test_warm_split_is_by_time_per_user(dataset) -> None:
    splits = build_samples(dataset,
                           SampleConfig(cold_item_fraction=0.0, val_per_user=1, test_per_user=2, min_history=0))
    for user in {f"u{u}" for u in range(8)}:
        stamps = {s: [r["timestamp"] for r in splits[s].to_pylist() if r["user_id"] == user]
                  for s in ("train", "val", "test")}
        assert (len(stamps["train"]), len(stamps["val"]), len(stamps["test"])) == (9, 1, 2)
        assert max(stamps["train"]) < min(stamps["val"]) < min(stamps["test"])


def test_history_is_the_last_k_earlier_interactions_split_by_label(dataset) -> None:
    splits = build_samples(dataset, SampleConfig(history_len=3, cold_item_fraction=0.0, min_history=0))
    events = sorted((r for r in dataset.interactions.to_pylist() if r["user_id"] == "u0"), key=lambda r: r["timestamp"])
    latest = next(r for r in splits["test"].to_pylist()
                  if r["user_id"] == "u0" and r["item_id"] == events[-1]["item_id"])
    earlier = events[-4:-1]
    assert latest["liked_ids"] == [e["item_id"] for e in earlier if e["label"] == 1]
    assert latest["disliked_ids"] == [e["item_id"] for e in earlier if e["label"] == 0]
    assert latest["liked_titles"] == [f"Title {i}" for i in latest["liked_ids"]]


def test_min_history_drops_each_users_first_interactions(dataset) -> None:
    total = sum(t.num_rows
                for t in build_samples(dataset, SampleConfig(min_history=2, cold_item_fraction=0.0)).values())
    assert total == 8 * (12 - 2)


def test_few_shot_is_deterministic_per_seed(dataset, tmp_path) -> None:
    make_samples(dataset, tmp_path / "samples", SampleConfig())
    train = read_samples(tmp_path / "samples", "train")
    first = few_shot(train, 16, seed=5).column("sample_id").to_pylist()
    assert first == few_shot(train, 16, seed=5).column("sample_id").to_pylist()
    assert first != few_shot(train, 16, seed=6).column("sample_id").to_pylist()
    assert len(set(first)) == 16
    with pytest.raises(SampleError, match="shots"):
        few_shot(train, train.num_rows + 1, seed=0)


def test_sample_config_rejects_unknown_keys() -> None:
    from atflrec.config import ConfigError

    with pytest.raises(ConfigError, match="histroy_len"):
        build_config(SampleConfig, {"histroy_len": 5})
