"""LoRA adapters with peft: several named adapters on ONE base model.

``shared`` is one adapter that sees the prompt with text and audio tokens; ``separate`` is a
``text`` adapter on text-only prompts plus an ``audio`` adapter on prompts with audio tokens. Which
adapters a model has follows from its fusion strategy (:mod:`atflrec.model.fusion`).
"""

from __future__ import annotations

from pydantic import Field

from atflrec.config import StrictModel

# Adapter name → whether its prompts carry audio placeholder tokens.
ADAPTER_SEES_AUDIO = {"shared": True, "text": False, "audio": True}


class LoraSettings(StrictModel):
    """Applied to every adapter of a model (TALLRec's defaults)."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1, description="module names that get LoRA"
    )


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM",
    )


def attach_adapters(base_model, names: list[str], settings: LoraSettings):
    """Wrap ``base_model`` in a ``PeftModel`` holding one fresh adapter per name (base frozen)."""
    from peft import get_peft_model

    unknown = [n for n in names if n not in ADAPTER_SEES_AUDIO]
    if unknown:
        raise ValueError(f"unknown adapter name(s) {unknown}; known: {sorted(ADAPTER_SEES_AUDIO)}")
    model = get_peft_model(base_model, lora_config(settings), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, lora_config(settings))
    return model


def adapter_parameters(peft_model, name: str) -> list:
    """The LoRA parameters of adapter ``name`` (peft names them ``...lora_A.<name>.weight``)."""
    return [p for n, p in peft_model.named_parameters() if f".{name}." in n and "lora_" in n]
