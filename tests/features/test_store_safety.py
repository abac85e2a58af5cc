"""#18 finding 6: an incremental feature run cannot wipe the store. An unmounted audio folder keeps
the stored features (unless --prune), a subset of Mel-bin counts keeps the other tables, and a
writer lock stops a second run from deleting the first one's parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atflrec.features.pipeline import FeatureConfig, build_feature_store
from atflrec.features.store import LOCK_FILE, StoreError, StoreLocked, load_features, read_manifest, writer_lock


def dataset(root: Path, tone, make_dataset) -> Path:
    import soundfile as sf

    (root / "audio").mkdir(parents=True)
    for n in range(3):
        sf.write(root / "audio" / f"{n}.wav", tone(1.0, seed=n), 16000)
    make_dataset(root, {f"i{n}": f"audio/{n}.wav" for n in range(3)})
    return root


def parts(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.glob("mel*/part-*.parquet")}


def test_an_unmounted_audio_folder_keeps_the_store(ray_cluster, tmp_path, tone, make_dataset) -> None:
    data, store = dataset(tmp_path / "data", tone, make_dataset), tmp_path / "store"
    config = FeatureConfig(n_mels=[40], clip_seconds=0.5)
    build_feature_store(data, str(store), config)
    before, stored = parts(store), load_features(str(store), 40)
    (data / "audio").rename(tmp_path / "unmounted")  # the volume is not there
    rerun = build_feature_store(data, str(store), config)
    assert rerun.kept_without_audio == 3 and rerun.skipped == 3 and rerun.dropped == 0 and rerun.quarantined == 0
    assert "kept although their audio is missing" in rerun.describe()
    assert parts(store) == before and sorted(load_features(str(store), 40)) == sorted(stored)
    # A parameter change cannot recompute them: refused, the store untouched.
    with pytest.raises(StoreError, match="no readable audio now.*--prune"):
        build_feature_store(data, str(store), FeatureConfig(n_mels=[40], clip_seconds=1.0))
    assert parts(store) == before
    # --prune: the operator means it.
    pruned = build_feature_store(data, str(store), config.model_copy(update={"prune": True}))
    assert pruned.dropped == 3 and read_manifest(str(store))["stored_items"] == 0 and not parts(store)


def test_a_subset_of_mel_counts_keeps_the_other_tables(ray_cluster, tmp_path, tone, make_dataset) -> None:
    data, store = dataset(tmp_path / "data", tone, make_dataset), tmp_path / "store"
    build_feature_store(data, str(store), FeatureConfig(n_mels=[40, 80], clip_seconds=0.5))
    before = parts(store)
    subset = build_feature_store(data, str(store), FeatureConfig(n_mels=[40], clip_seconds=0.5))
    assert subset.n_mels == [40, 80] and subset.featurised == 0 and subset.skipped == 3
    assert parts(store) == before and len(load_features(str(store), 80)) == 3
    assert read_manifest(str(store))["params"]["n_mels"] == [40, 80]
    build_feature_store(data, str(store), FeatureConfig(n_mels=[40], clip_seconds=0.5, prune=True))
    assert read_manifest(str(store))["params"]["n_mels"] == [40] and not list(store.glob("mel80"))


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(ray_cluster, tmp_path, tone, make_dataset) -> None:
    data, store = dataset(tmp_path / "data", tone, make_dataset), tmp_path / "store"
    config = FeatureConfig(n_mels=[40], clip_seconds=0.5)
    with writer_lock(str(store)):  # another run (alive: this process) holds it
        with pytest.raises(StoreLocked, match="being written by another run"):
            build_feature_store(data, str(store), config)
    assert read_manifest(str(store)) is None and not parts(store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (store / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    built = build_feature_store(data, str(store), config)
    assert built.featurised == 3 and not (store / LOCK_FILE).exists()  # released after the run
