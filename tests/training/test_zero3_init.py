"""ZeRO-3 workers build the base model straight into partitions: no worker holds it whole."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from atflrec.model.network import ModelConfig
from atflrec.training.deepspeed_config import resolve_deepspeed_config

WORKERS = 2


def partition_report(loop_config: dict[str, Any]) -> list[dict[str, Any]] | None:
    """In each Ray Train worker: build the model as a ZeRO-3 worker does and describe its
    parameters; rank 0 returns every rank's description."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from atflrec.training.local import build_model
    from atflrec.training.worker import is_trained_key

    config = ModelConfig.model_validate(loop_config["model"])
    model = build_model(config, seed=0, zero3_config=loop_config["deepspeed"])
    saved = load_file(str(Path(config.base_model) / "model.safetensors"))
    base = {n.removeprefix("llm.base_model.model.").replace(".base_layer", ""): p
            for n, p in model.named_parameters() if not is_trained_key(n)}
    trained = [p for n, p in model.named_parameters() if is_trained_key(n)]
    report = {
        "base_names": sorted(base),
        "partitioned": all(hasattr(p, "ds_id") for p in base.values()),
        "local_numel": sum(p.numel() for p in base.values()),
        "partition_numel": sum(p.ds_tensor.numel() for p in base.values()),
        "full_numels": [p.ds_numel for p in base.values()],
        "trained_whole": bool(trained) and all(not hasattr(p, "ds_id") and p.numel() > 0 for p in trained),
    }
    with deepspeed.zero.GatheredParameters(list(base.values())):
        report["gathered_equal_saved"] = all(torch.equal(p.data, saved[n]) for n, p in base.items())
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, report)
    return everyone if dist.get_rank() == 0 else None


@pytest.mark.usefixtures("ray_cluster")
def test_a_zero3_worker_holds_only_its_partition_of_the_base_model(tiny_base_dir: Path, tmp_path: Path) -> None:
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module

    ds_config = resolve_deepspeed_config("deepspeed/zero3_cpu", {}, batch_size=1, grad_accum=1,
                                         max_grad_norm=None, bf16=False)
    trainer = TorchTrainer(
        partition_report,
        train_loop_config={"model": {"base_model": str(tiny_base_dir), "encoder": {"n_mels": 8, "width": 16}},
                           "deepspeed": ds_config},
        scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="zero3-init", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    reports = result.return_value
    assert len(reports) == WORKERS
    saved_names = set(load_file(str(tiny_base_dir / "model.safetensors")))
    for report in reports:
        assert set(report["base_names"]) == saved_names  # every checkpoint tensor is a parameter (tied head: one)
        assert report["partitioned"] and report["local_numel"] == 0  # nothing whole outside a gather
        # Each rank keeps its (padded) share of every parameter: half of the model, not all of it.
        assert report["partition_numel"] == sum(math.ceil(n / WORKERS) for n in report["full_numels"])
        assert report["gathered_equal_saved"]  # the checkpoint's values went into the partitions
        assert report["trained_whole"]  # adapters, encoder, fusion: whole until the engine partitions them
