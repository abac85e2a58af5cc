"""DeepSpeed configs: a shipped JSON file per setup (``deepspeed/NAME``), its ``"auto"`` values filled
from our config.

Batch size, gradient accumulation, clipping and bf16 live in the training config (one place, shared
with the local loop); a DeepSpeed file says ``"auto"`` for them, as Hugging Face's integration does.
An explicit value in the file must agree with the training config, so the two can never disagree
silently. Keys starting with ``_`` are comments and are dropped.
"""

from __future__ import annotations

import json
from typing import Any

from atflrec.config import ConfigError, find_config, merge

AUTO = "auto"


def _fill(config: dict[str, Any], dotted: str, value: Any, source: str) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.get(key) or {}
    current = node.get(leaf, AUTO)
    if current == AUTO:
        return merge(config, {dotted: value})
    if current != value:
        raise ConfigError(f"deepspeed {dotted}={current!r} disagrees with {source}={value!r}; set it to \"auto\"")
    return config


def resolve_deepspeed_config(path: str, overrides: dict[str, Any], *, batch_size: int, grad_accum: int,
                             max_grad_norm: float | None, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config dict a worker passes to ``deepspeed.initialize``."""
    try:
        file = find_config(path)
    except ConfigError as error:
        raise ConfigError(f"deepspeed.config: {error}") from None
    try:
        loaded = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"deepspeed.config: {path} is not valid JSON ({error})") from error
    config = merge({k: v for k, v in loaded.items() if not k.startswith("_")}, overrides)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed zero_optimization.stage must be 0-3, not {stage!r}")
    config = _fill(config, "train_micro_batch_size_per_gpu", batch_size, "optim.batch_size")
    config = _fill(config, "gradient_accumulation_steps", grad_accum, "optim.grad_accum")
    config = _fill(config, "gradient_clipping", 0.0 if max_grad_norm is None else max_grad_norm, "optim.max_grad_norm")
    config = _fill(config, "bf16.enabled", bf16, "precision")
    if "optimizer" in config:
        raise ConfigError("deepspeed optimizer: the optimizer comes from the training config (optim.*); remove it")
    return config


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))
