"""Every writing stage against an S3 store, run as its own process (its own Ray, whose workers inherit
this process's environment, as a cluster node's do): ``python s3_stages.py first|rest SETTINGS_JSON``.

``first``: the feature store, to S3 and to a local directory, then a Train run checkpointing to S3
(the test kills it after its first checkpoint). ``rest``: the run resumed from S3 and exported to
S3, then a two-trial search whose OUT is on S3, its best trial also exported to a local directory.
The outcomes go to stdout as one JSON line after ``OUTCOME``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from atflrec.features.pipeline import FeatureConfig, build_feature_store
from atflrec.training.distributed import train
from atflrec.training.distributed_config import TrainConfig
from atflrec.tuning.search import run_search
from atflrec.tuning.space import TuneSpace

N_MELS = 8


def model(settings: dict[str, Any]) -> dict[str, Any]:
    return {"base_model": settings["base_model"], "encoder": {"n_mels": N_MELS, "width": 16},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}}


def training(settings: dict[str, Any]) -> dict[str, Any]:
    return {"model": model(settings), "samples": settings["samples"], "features": f"{settings['s3']}/features",
            "shots": 8, "seed": 0, "eval_splits": ["val", "test"], "max_eval_samples": 8,
            "optim": {"lr": 1e-2, "encoder_lr": 1e-2, "batch_size": 4, "epochs": 3},
            "deepspeed": {"config": "deepspeed/zero2_cpu"}, "scaling": {"num_workers": 1, "cpus_per_worker": 1}}


def train_config(settings: dict[str, Any]) -> TrainConfig:
    return TrainConfig.model_validate({
        **training(settings), "address": "local",
        "run": {"name": "run", "storage_path": f"{settings['s3']}/train", "keep_best": 1},
        "out": f"{settings['s3']}/exports/train-best",
    })


def first(settings: dict[str, Any]) -> dict[str, Any]:
    features = FeatureConfig(n_mels=[N_MELS], clip_seconds=0.5, address="local")
    for out in (f"{settings['s3']}/features", f"{settings['local']}/features"):
        build_feature_store(settings["data"], out, features)
    train(train_config(settings))
    return {}


def rest(settings: dict[str, Any]) -> dict[str, Any]:
    outcome = train(train_config(settings), resume=True)
    space = TuneSpace.model_validate({
        "train": {**training(settings), "optim": {**training(settings)["optim"], "epochs": 1}, "run": {"keep_best": 1}},
        "space": {"model.lora.r": [2, 4]}, "num_samples": 2, "scheduler": "fifo", "search": "random", "seed": 0,
        "max_concurrent_trials": 1,  # two at once can run a busy 2-core test machine out of memory
        "out": f"{settings['s3']}/tune", "export": f"{settings['local']}/tune-best",
    })
    best = run_search(space)
    return {"train": {"run_path": outcome.run_path, "exported": outcome.exported,
                      "best_checkpoint": outcome.best_checkpoint, "resumed_from": outcome.resumed_from,
                      "worker_groups": outcome.worker_groups,
                      "metrics": outcome.metrics},
            "tune": {"best": best}}


if __name__ == "__main__":
    phase, settings = sys.argv[1], json.loads(sys.argv[2])
    print("OUTCOME " + json.dumps({"first": first, "rest": rest}[phase](settings)), flush=True)
