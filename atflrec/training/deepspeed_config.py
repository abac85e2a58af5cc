"""DeepSpeed configs: a shipped JSON file per setup, its ``"auto"`` values filled from our config.

Batch size, gradient accumulation, clipping and bf16 live in the training config (one place, shared
with the local loop); a DeepSpeed file says ``"auto"`` for them, as Hugging Face's integration does.
An explicit value in the file must agree with the training config, so the two can never disagree
silently. Keys starting with ``_`` are comments and are dropped.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from atflrec.config import ConfigError

AUTO = "auto"


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` merged into a copy of ``base``, nested dicts key by key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _fill(config: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    current = node.get(leaf, AUTO)
    if current == AUTO:
        node[leaf] = value
    elif current != value:
        raise ConfigError(f"deepspeed {dotted}={current!r} disagrees with {source}={value!r}; set it to \"auto\"")


def resolve_deepspeed_config(path: str, overrides: dict[str, Any], *, batch_size: int, grad_accum: int,
                             max_grad_norm: float | None, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config dict a worker passes to ``deepspeed.initialize``."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"deepspeed.config: no DeepSpeed config file at {path}")
    try:
        loaded = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"deepspeed.config: {path} is not valid JSON ({error})") from error
    config = merge({k: v for k, v in loaded.items() if not k.startswith("_")}, overrides)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed zero_optimization.stage must be 0-3, not {stage!r}")
    _fill(config, "train_micro_batch_size_per_gpu", batch_size, "optim.batch_size")
    _fill(config, "gradient_accumulation_steps", grad_accum, "optim.grad_accum")
    _fill(config, "gradient_clipping", 0.0 if max_grad_norm is None else max_grad_norm, "optim.max_grad_norm")
    _fill(config, "bf16.enabled", bf16, "precision")
    if "optimizer" in config:
        raise ConfigError("deepspeed optimizer: the optimizer comes from the training config (optim.*); remove it")
    return config


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))
