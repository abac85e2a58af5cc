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


def memory_over_stages(loop_config: dict[str, Any]) -> dict[str, Any]:
    """In a Ray Train worker: three stages' models built, given an engine with an optimizer and
    released, as the worker does per stage; the worker's anonymous memory (MB) after each."""
    import deepspeed
    import torch

    from atflrec.testing import memory_status
    from atflrec.training.heap import return_freed_blocks
    from atflrec.training.local import build_model
    from atflrec.training.worker import release_stage

    def anonymous_mb() -> float:
        return memory_status()["RssAnon"] / 2**20

    return_freed_blocks()
    config = ModelConfig.model_validate(loop_config["model"])
    after = []
    for _ in range(3):
        model = build_model(config, seed=0, zero3_config=loop_config["deepspeed"])
        adapters = [p.requires_grad_(True) for n, p in model.named_parameters() if "lora_" in n]
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(adapters, lr=1e-3),
                                          config=loop_config["deepspeed"])
        release_stage(engine, model)
        del engine, model, adapters
        after.append(anonymous_mb())
    return {"after_stage_mb": after}


@pytest.mark.usefixtures("ray_cluster")
def test_a_finished_stage_gives_its_model_memory_back(tmp_path: Path) -> None:
    """DeepSpeed keeps a destroyed engine and its model reachable: without release_stage each
    stage left one more whole partition (here the whole model: one worker) behind."""
    import torch
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import LlamaConfig, LlamaForCausalLM

    from atflrec.testing import build_tiny_tokenizer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    tokenizer = build_tiny_tokenizer()
    base = LlamaForCausalLM(LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=32000,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    model_mb = sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    del base
    ds_config = resolve_deepspeed_config("deepspeed/zero3_cpu", {}, batch_size=1, grad_accum=1,
                                         max_grad_norm=None, bf16=False)
    trainer = TorchTrainer(
        memory_over_stages,
        train_loop_config={"model": {"base_model": str(tmp_path / "base"), "encoder": {"n_mels": 8, "width": 16}},
                           "deepspeed": ds_config},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="zero3-release", storage_path=str(tmp_path / "runs")),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    first, *_, last = result.return_value["after_stage_mb"]
    assert model_mb > 100 and torch.get_default_dtype() == torch.float32
    assert last - first < 0.3 * model_mb, (result.return_value, model_mb)  # unreleased: about 2 * model_mb
