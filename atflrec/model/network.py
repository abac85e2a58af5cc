"""The ATFLRec model: one base LLM with named LoRA adapters, an audio encoder and a fusion strategy.

``forward(batch, stage)`` returns Yes-vs-No margins: for a stage that trains an adapter, that
adapter's own margin; otherwise (a fusion stage, or ``stage=None`` for scoring) the strategy's
combined margin. The same module serves the local loop, a DeepSpeed engine and the server.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from atflrec.base_model.fetch import DEFAULT_MODEL
from atflrec.config import StrictModel
from atflrec.model.adapters import ADAPTER_SEES_AUDIO, LoraSettings, adapter_parameters, attach_adapters
from atflrec.model.audio_encoder import AudioEncoder, AudioEncoderConfig
from atflrec.model.batch import AUDIO, TEXT, Batch, PromptInputs
from atflrec.model.fusion import FusionConfig, PassOutput, Stage, build_strategy
from atflrec.model.scoring import answer_margin, yes_no_token_ids
from atflrec.prompts import PromptConfig, add_audio_token


class ModelConfig(StrictModel):
    """Everything that defines an ATFLRec model (saved with every artifact)."""

    base_model: str = Field(DEFAULT_MODEL, description="built-in model name, local HF model dir or hub id")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="instruction prompt")
    encoder: AudioEncoderConfig = Field(default_factory=AudioEncoderConfig, description="audio encoder")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings of every adapter")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="fusion strategy")


def prompt_kind(adapter: str) -> str:
    return AUDIO if ADAPTER_SEES_AUDIO[adapter] else TEXT


class ATFLRecModel(nn.Module):
    def __init__(self, config: ModelConfig, base_model: Any, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.audio_token_id = add_audio_token(tokenizer)
        self.answer_ids = yes_no_token_ids(tokenizer, config.prompt)
        hidden = base_model.config.hidden_size
        self.fusion = build_strategy(config.fusion, hidden)
        self.llm = attach_adapters(base_model, list(self.fusion.adapters), config.lora)
        self.encoder = AudioEncoder(config.encoder, hidden)
        self.stage: Stage | None = None
        self.configure_stage(None)

    @property
    def adapters(self) -> tuple[str, ...]:
        return self.fusion.adapters

    @property
    def prompt_kinds(self) -> tuple[str, ...]:
        return tuple(sorted({prompt_kind(a) for a in self.adapters}))

    # --- stages -------------------------------------------------------------------------------

    def configure_stage(self, stage: Stage | None) -> list[nn.Parameter]:
        """Make exactly ``stage``'s parts trainable (nothing for ``None``); returns them."""
        self.stage = stage
        for p in self.parameters():
            p.requires_grad_(False)
        trainable: list[nn.Parameter] = []
        if stage is not None:
            if stage.adapter is not None:
                trainable += adapter_parameters(self.llm, stage.adapter)
            if stage.train_encoder:
                trainable += list(self.encoder.parameters())
            if stage.train_fusion:
                trainable += list(self.fusion.parameters())
        for p in trainable:
            p.requires_grad_(True)
        return trainable

    def train(self, mode: bool = True) -> ATFLRecModel:
        """Train mode for the stage's trained parts only: frozen parts keep dropout off."""
        super().train(mode)
        if mode:
            if self.stage is None or self.stage.adapter is None:
                self.llm.eval()
            if self.stage is None or not self.stage.train_encoder:
                self.encoder.eval()
        return self

    def _activate(self, adapter: str) -> None:
        # peft's set_adapter also sets requires_grad on adapters; keep it in line with the stage.
        if self.llm.active_adapter != adapter:
            trained = self.stage is not None and self.stage.adapter == adapter
            self.llm.set_adapter(adapter, inference_mode=not trained)

    # --- forward ------------------------------------------------------------------------------

    def embed(self, inputs: PromptInputs) -> torch.Tensor:
        """Token embeddings with the audio soft tokens written at the placeholder positions."""
        slots = inputs.input_ids == self.audio_token_id
        # The placeholder id is outside the embedding table; any id will do before overwriting.
        ids = inputs.input_ids.masked_fill(slots, 0)
        embeds = self.llm.get_input_embeddings()(ids)
        n_slots = int(slots.sum())
        if n_slots == 0:
            return embeds
        if inputs.audio is None:
            raise ValueError("the prompt has audio placeholders but the batch carries no audio features")
        tokens = self.encoder(inputs.audio, inputs.audio_mask).reshape(-1, embeds.shape[-1])
        if tokens.shape[0] != n_slots:
            raise ValueError(f"{n_slots} audio placeholders but {tokens.shape[0]} soft tokens")
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype))

    def run_adapter(self, adapter: str, inputs: PromptInputs) -> PassOutput:
        """One pass of the base model with ``adapter`` active, read at each row's answer position."""
        self._activate(adapter)
        embeds = self.embed(inputs)
        decoder = self.llm.get_base_model().get_decoder()
        states = decoder(inputs_embeds=embeds, attention_mask=inputs.attention_mask, use_cache=False).last_hidden_state
        last = inputs.attention_mask.sum(1) - 1
        hidden = states[torch.arange(states.shape[0], device=states.device), last]
        margin = answer_margin(self.llm.get_output_embeddings(), hidden, self.answer_ids)
        return PassOutput(margin=margin, hidden=hidden)

    def forward(self, batch: Batch, stage: Stage | None = None) -> torch.Tensor:
        """Yes-vs-No margins ``[batch]`` (see the module docstring)."""
        if stage is not None and stage.adapter is not None:
            return self.run_adapter(stage.adapter, batch.prompts[prompt_kind(stage.adapter)]).margin
        with torch.no_grad():  # adapters and encoder are frozen outside their own stage
            outputs = {a: self.run_adapter(a, batch.prompts[prompt_kind(a)]) for a in self.adapters}
        return self.fusion.combine(outputs, batch.history_logit)
