"""What a search settles before its first trial: the feature store, concurrency, the searcher."""

from __future__ import annotations

from pathlib import Path

import pytest
from tune_setup import make_space

from atflrec.features.store import StoreError, read_manifest
from atflrec.tuning.space import TuneSpace, plan


@pytest.fixture(scope="module")
def store(tune_benchmark: Path, tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> Path:
    """A feature store with 8-bin features only."""
    from atflrec.features.pipeline import FeatureConfig, build_feature_store

    path = tmp_path_factory.mktemp("tune-store") / "features"
    build_feature_store(tune_benchmark / "data", str(path), FeatureConfig(n_mels=[8], clip_seconds=0.5))
    return path


def _space(tune_benchmark: Path, tiny_base_dir: Path, tmp_path: Path, store: Path, **overrides) -> TuneSpace:
    return TuneSpace.model_validate(make_space(tune_benchmark, tiny_base_dir, tmp_path / "out", store, **overrides))


def test_a_store_without_a_mel_count_of_the_space_stops_the_search_before_any_trial(
        tune_benchmark, tiny_base_dir, tmp_path, store) -> None:
    from atflrec.tuning.search import run_search

    space = _space(tune_benchmark, tiny_base_dir, tmp_path, store, data=None, **{"space.model.encoder.n_mels": [8, 16]})
    with pytest.raises(StoreError, match=r"holds Mel-bin counts \[8\] but the space also uses \[16\].*--data"):
        run_search(space)
    missing = _space(tune_benchmark, tiny_base_dir, tmp_path, tmp_path / "nowhere", data=None)
    with pytest.raises(StoreError, match="no feature store at .*nowhere.*--data"):
        run_search(missing)
    assert not (tmp_path / "out").exists()  # no trial ran, nothing was written


def test_a_store_that_holds_every_mel_count_is_not_rebuilt(tune_benchmark, tiny_base_dir, tmp_path, store,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from atflrec.tuning.features import ensure_features

    before = read_manifest(str(store))
    ensure_features(plan(_space(tune_benchmark, tiny_base_dir, tmp_path, store, **{"space.model.encoder.n_mels": [8]})))
    assert read_manifest(str(store)) == before
    assert "already holds Mel-bin counts [8]" in capsys.readouterr().out


def test_concurrency_follows_the_workers_each_trial_reserves(tune_benchmark, tiny_base_dir, tmp_path) -> None:
    from atflrec.tuning.search import concurrent_trials

    def trials_at_once(cluster: dict[str, float], **overrides) -> int:
        return concurrent_trials(plan(_space(tune_benchmark, tiny_base_dir, tmp_path, tmp_path / "s", **overrides)),
                                 cluster)

    laptop = {"CPU": 2.0, "memory": 16 * 2**30}
    assert trials_at_once(laptop) == 2  # 1 worker x 1 CPU each; the drivers take no CPU
    assert trials_at_once(laptop, **{"train.scaling.num_workers": 2}) == 1
    assert trials_at_once({"CPU": 2.0, "memory": 1.5 * 2**30}) == 1  # each driver reserves 1 GiB
    gpus = {"train.scaling": {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 4, "gpus_per_worker": 1}}
    assert trials_at_once({"CPU": 64.0, "GPU": 8.0, "memory": 256 * 2**30}, **gpus) == 4
    assert trials_at_once(laptop, max_concurrent_trials=3) == 3  # the space's own cap wins


def test_optuna_suggests_points_inside_the_space(tune_benchmark, tiny_base_dir, tmp_path) -> None:
    from atflrec.tuning.search import _search_alg

    search = plan(_space(tune_benchmark, tiny_base_dir, tmp_path, tmp_path / "s", search="optuna"))
    searcher, cap = _search_alg(search, 2)
    assert type(searcher).__name__ == "OptunaSearch" and cap == 2
    searcher.set_search_properties("val_auc", "max", {k: d.to_tune() for k, d in search.space.space.items()})
    for n in range(3):
        point = searcher.suggest(f"t{n}")
        assert set(point) == set(search.knobs)
        assert point["model.lora.r"] in (2, 4) and 1e-3 <= point["optim.lr"] <= 3e-2
        search.trial_config(point)  # a valid training config
