"""Features for every Mel-bin count a search can use, made ready once before any trial starts."""

from __future__ import annotations

from atflrec.config import build_config
from atflrec.console import say
from atflrec.features.pipeline import FeatureConfig, build_feature_store
from atflrec.features.store import StoreError, read_manifest
from atflrec.tuning.space import SearchPlan


def ensure_features(plan: SearchPlan) -> None:
    """Build or extend the store (``train.features``) from ``data`` when the space names a dataset
    and the store lacks a Mel-bin count of the space; otherwise check that the store holds them all.

    Trials only read the store, so nothing is computed twice however many trials share a count.
    Extending keeps the Mel-bin counts the store already had.
    """
    store = plan.base.get("features")
    if store is None:
        return  # a search without audio
    manifest = read_manifest(store)
    held = manifest["params"]["n_mels"] if manifest else []
    missing = sorted(set(plan.n_mels) - set(held))
    data = plan.space.data
    if data is None:
        if manifest is None:
            raise StoreError(f"no feature store at {store!r}: set data=DATASET_DIR (atflrec tune --data DIR) "
                             "to build it before the trials, or run `atflrec features` first")
        if missing:
            raise StoreError(
                f"the feature store at {store!r} holds Mel-bin counts {held} but the space also uses {missing}: "
                f"set data=DATASET_DIR (atflrec tune --data DIR) to add them before the trials, or run "
                f"`atflrec features --data DIR --out {store} "
                f"--n-mels {','.join(map(str, sorted(set(held) | set(missing))))}`")
        return
    clip = plan.space.feature_clip_seconds or (manifest["params"]["clip_seconds"] if manifest else None)
    if manifest is not None and not missing and clip == manifest["params"]["clip_seconds"]:
        say(f"features: the store at {store} already holds Mel-bin counts {plan.n_mels}")
        return
    settings = {"n_mels": sorted(set(held) | set(plan.n_mels)), "address": plan.space.address}
    if clip is not None:
        settings["clip_seconds"] = clip
    config = build_config(FeatureConfig, settings, "features for the search")
    say(f"features: Mel-bin counts {config.n_mels} for the search, once, into {store}")
    say(build_feature_store(data, store, config).describe())
