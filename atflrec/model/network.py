"""The ATFLRec model: one base LLM with named LoRA adapters, an audio encoder and a fusion strategy.

``forward(batch, stage)`` returns Yes-vs-No margins: for a stage that trains an adapter, that
adapter's own margin; otherwise (a fusion stage, or ``stage=None`` for scoring) the strategy's
combined margin. The same module serves the local loop, a DeepSpeed engine and the server:
:meth:`ATFLRecModel.score_queries`, the server's shared-prefix route, runs its passes through the
same ``embed``, ``decode`` and ``answer`` as ``forward``, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn
from transformers import DynamicCache

from atflrec.base_model.fetch import DEFAULT_MODEL
from atflrec.config import StrictModel
from atflrec.model.adapters import ADAPTER_SEES_AUDIO, LoraSettings, adapter_parameters, attach_adapters
from atflrec.model.audio_encoder import AudioEncoder, AudioEncoderConfig
from atflrec.model.batch import AUDIO, TEXT, Batch, PromptInputs, history_logit
from atflrec.model.fusion import FusionConfig, PassOutput, Stage, build_strategy
from atflrec.model.prefix import AudioTokenSource, PrefixCache, Query, SplitPrompts, pad, split_prompts
from atflrec.model.scoring import answer_margin, probability, yes_no_token_ids
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

    def checkpoint_activations(self, enabled: bool) -> None:
        """Recompute each decoder layer's activations during backward instead of holding them from
        the forward (transformers' activation checkpointing, non-reentrant: it needs no gradient on
        the inputs and runs ZeRO-3's gather hooks again for the recomputation). In train mode only."""
        base = self.llm.get_base_model()
        if enabled:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.activation_checkpointing_disable()

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

    # --- forward: the one path every score goes through --------------------------------------

    def embed(self, input_ids: torch.Tensor, audio_tokens: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Token embeddings with audio soft tokens written at the placeholder positions, in order
        (``audio_tokens`` is called only when the ids hold placeholders)."""
        slots = input_ids == self.audio_token_id
        # The placeholder id is outside the embedding table; any id will do before overwriting.
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        n_slots = int(slots.sum())
        if n_slots == 0:
            return embeds
        tokens = audio_tokens().reshape(-1, embeds.shape[-1])
        if tokens.shape[0] != n_slots:
            raise ValueError(f"{n_slots} audio placeholders but {tokens.shape[0]} soft tokens")
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.device, embeds.dtype))

    def encoded_audio(self, inputs: PromptInputs) -> torch.Tensor:
        """The batch's audio through the encoder: soft tokens in placeholder order."""
        if inputs.audio is None:
            raise ValueError("the prompt has audio placeholders but the batch carries no audio features")
        return self.encoder(inputs.audio, inputs.audio_mask)

    def decode(self, adapter: str, embeds: torch.Tensor, attention_mask: torch.Tensor, *, use_cache: bool = False,
               position_ids: torch.Tensor | None = None, past_key_values: Any = None) -> Any:
        """The base model's decoder with ``adapter`` active; its output (hidden states, and the
        key/value cache with ``use_cache``: see :meth:`score_queries`)."""
        self._activate(adapter)
        decoder = self.llm.get_base_model().get_decoder()
        return decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=past_key_values, use_cache=use_cache)

    def answer(self, states: torch.Tensor, attention_mask: torch.Tensor) -> PassOutput:
        """The Yes-vs-No margin read at each right-padded row's last real position."""
        last = attention_mask.sum(1) - 1
        hidden = states[torch.arange(states.shape[0], device=states.device), last]
        margin = answer_margin(self.llm.get_output_embeddings(), hidden, self.answer_ids)
        return PassOutput(margin=margin, hidden=hidden)

    def run_adapter(self, adapter: str, inputs: PromptInputs) -> PassOutput:
        """One pass of the base model with ``adapter`` active, read at each row's answer position."""
        embeds = self.embed(inputs.input_ids, lambda: self.encoded_audio(inputs))
        states = self.decode(adapter, embeds, inputs.attention_mask).last_hidden_state
        return self.answer(states, inputs.attention_mask)

    def forward(self, batch: Batch, stage: Stage | None = None) -> torch.Tensor:
        """Yes-vs-No margins ``[batch]`` (see the module docstring)."""
        if stage is not None and stage.adapter is not None:
            return self.run_adapter(stage.adapter, batch.prompts[prompt_kind(stage.adapter)]).margin
        with torch.no_grad():  # adapters and encoder are frozen outside their own stage
            outputs = {a: self.run_adapter(a, batch.prompts[prompt_kind(a)]) for a in self.adapters}
        return self.fusion.combine(outputs, batch.history_logit)

    # --- shared-prefix scoring (serving): the same passes, the prefix run once per query -----

    @torch.inference_mode()
    def score_queries(self, queries: Sequence[Query], audio_items: Container[str], audio: AudioTokenSource,
                      rows_per_pass: int = 32) -> list[np.ndarray]:
        """P(Yes) of every query's candidates, in order, each query's prefix run once per adapter
        (:mod:`atflrec.model.prefix`). Late fusion runs one prefix per adapter: the text and the
        audio adapter see different prompts and give different keys and values."""
        outputs: dict[str, PassOutput] = {}
        for adapter in self.adapters:
            splits = split_prompts(self, queries, prompt_kind(adapter), audio_items)
            prefix = self._run_prefixes(adapter, splits, audio)
            rows = [(i, ids, items) for i, s in enumerate(splits) for ids, items in zip(s.suffix_ids, s.suffix_items)]
            passes = [self._run_suffixes(adapter, prefix, rows[start:start + rows_per_pass], audio)
                      for start in range(0, len(rows), rows_per_pass)]
            outputs[adapter] = PassOutput(torch.cat([p.margin for p in passes]), torch.cat([p.hidden for p in passes]))
        history = torch.cat([history_logit([q.history] * len(q.targets)) for q in queries])
        scores = probability(self.fusion.combine(outputs, history)).cpu().numpy()
        return np.split(scores, np.cumsum([len(q.targets) for q in queries])[:-1])

    def _pad_id(self) -> int:
        return 0 if self.tokenizer.pad_token_id is None else self.tokenizer.pad_token_id

    def _run_prefixes(self, adapter: str, splits: Sequence[SplitPrompts], audio: AudioTokenSource) -> PrefixCache:
        """One pass over every query's prefix (right-padded together), keeping the key/value cache."""
        device = self.llm.get_input_embeddings().weight.device
        ids, mask = pad([s.prefix_ids for s in splits], self._pad_id(), device)
        embeds = self.embed(ids, lambda: audio.tokens([item for s in splits for item in s.prefix_items]))
        cache = self.decode(adapter, embeds, mask, use_cache=True).past_key_values
        return PrefixCache([(layer.keys, layer.values) for layer in cache.layers], mask, mask.sum(1))

    def _run_suffixes(self, adapter: str, prefix: PrefixCache, rows: Sequence[tuple[int, list[int], list[str]]],
                      audio: AudioTokenSource) -> PassOutput:
        """Candidate suffixes ``(query index, token ids, audio items)`` on their query's prefix cache,
        each row reading its own query's cache rows, the prefix padding masked out."""
        device = prefix.mask.device
        owner = torch.tensor([r[0] for r in rows], device=device)
        decoder_config = self.llm.get_base_model().get_decoder().config
        # A fresh cache per pass: the forward appends the suffix keys/values to it in place.
        cache = DynamicCache([(k[owner], v[owner]) for k, v in prefix.keys_values], config=decoder_config)
        ids, mask = pad([r[1] for r in rows], self._pad_id(), device)
        embeds = self.embed(ids, lambda: audio.tokens([item for r in rows for item in r[2]]))
        attention = torch.cat([prefix.mask[owner], mask], dim=1)
        positions = prefix.lengths[owner].unsqueeze(1) + torch.arange(ids.shape[1], device=device)
        states = self.decode(adapter, embeds, attention, use_cache=True, position_ids=positions,
                             past_key_values=cache).last_hidden_state
        return self.answer(states, mask)
