"""Shared-prefix scoring: one history, many candidates; the prompt before the target runs once.

Each candidate's prompt is rendered and tokenized in full, exactly as the offline
:class:`~atflrec.model.batch.Collator` does; the tokens every candidate of a query shares (the
instruction and the history, up to where the target starts) are its prefix. Per adapter, the
prefix runs once with its key/value cache kept, and each candidate runs only its own tokens on
that cache, at the positions they have in the full prompt. Token ids and positions are the full
prompt's, so scores equal the full-prompt path up to floating-point rounding.

Queries batched together (several requests in one Serve batch) run their prefixes as one
right-padded batch; candidate suffixes of all of them share forward passes, each row reading the
cache rows of its own query, with the prefix padding masked out.
"""

from __future__ import annotations

import os
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import DynamicCache

from atflrec.model.batch import AUDIO, history_logit
from atflrec.model.fusion import PassOutput
from atflrec.model.network import ATFLRecModel, prompt_kind
from atflrec.model.scoring import answer_margin, probability
from atflrec.prompts import render_prompt


class AudioTokenSource(Protocol):
    def tokens(self, items: Sequence[str]) -> torch.Tensor:
        """Soft tokens ``[len(items) * k, hidden]`` of ``items``, in order."""


@dataclass(frozen=True)
class Query:
    """One user history and the candidates to score against it."""

    history: dict[str, list[str]]  # liked_ids, liked_titles, disliked_ids, disliked_titles
    targets: list[tuple[str, str]]  # (item id, title) per candidate


@dataclass(frozen=True)
class SplitPrompts:
    """A query's prompts of one kind, tokenized and cut into the shared prefix and suffixes."""

    prefix_ids: list[int]
    prefix_items: list[str]  # items whose audio fills the prefix's placeholders, in order
    suffix_ids: list[list[int]]
    suffix_items: list[list[str]]


@dataclass(frozen=True)
class PrefixCache:
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [queries, heads, tokens, dim]
    mask: torch.Tensor  # [queries, tokens], False on right padding
    lengths: torch.Tensor  # [queries]


def shared_length(ids: Sequence[Sequence[int]], audio_token_id: int) -> int:
    """Length of the prefix all token lists share, leaving each at least one token, and never
    cutting a run of audio placeholders (an item's soft tokens stay on one side)."""
    first = ids[0]
    n = min(len(os.path.commonprefix([list(x) for x in ids])), min(len(x) for x in ids) - 1)
    while n > 0 and first[n] == audio_token_id and first[n - 1] == audio_token_id:
        n -= 1
    return n


def split_prompts(model: ATFLRecModel, queries: Sequence[Query], kind: str,
                  audio_items: Container[str]) -> list[SplitPrompts]:
    """Every query's prompts of one kind, tokenized in one call and cut at its shared prefix."""
    k = model.config.encoder.tokens_per_item if kind == AUDIO else 0
    prompts = [
        [render_prompt({**q.history, "item_id": item, "title": title}, model.tokenizer, model.config.prompt,
                       k, audio_items) for item, title in q.targets]
        for q in queries
    ]
    ids = model.tokenizer([p.text for ps in prompts for p in ps], add_special_tokens=False)["input_ids"]
    splits, start = [], 0
    for ps in prompts:
        own, start = ids[start:start + len(ps)], start + len(ps)
        n = shared_length(own, model.audio_token_id)
        n_items = own[0][:n].count(model.audio_token_id) // k if k else 0
        splits.append(SplitPrompts(
            prefix_ids=own[0][:n],
            prefix_items=list(ps[0].audio_item_ids[:n_items]),
            suffix_ids=[x[n:] for x in own],
            suffix_items=[list(p.audio_item_ids[n_items:]) for p in ps],
        ))
    return splits


def _pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[n, max_len]`` and their mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)


def embed(model: ATFLRecModel, ids: torch.Tensor, items: Sequence[str], audio: AudioTokenSource) -> torch.Tensor:
    """Token embeddings with the items' (cached) audio soft tokens at the placeholders, row by row."""
    slots = ids == model.audio_token_id
    embeds = model.llm.get_input_embeddings()(ids.masked_fill(slots, 0))
    n_slots = int(slots.sum())
    if n_slots == 0:
        return embeds
    tokens = audio.tokens(items)
    if tokens.shape[0] != n_slots:
        raise ValueError(f"{n_slots} audio placeholders but {tokens.shape[0]} soft tokens")
    return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.device, embeds.dtype))


def _pad_id(model: ATFLRecModel) -> int:
    pad = model.tokenizer.pad_token_id
    return 0 if pad is None else pad


def run_prefixes(model: ATFLRecModel, splits: Sequence[SplitPrompts], audio: AudioTokenSource) -> PrefixCache:
    """One forward pass over every query's prefix (the active adapter), keeping the cache."""
    device = model.llm.get_input_embeddings().weight.device
    ids, mask = _pad([s.prefix_ids for s in splits], _pad_id(model), device)
    embeds = embed(model, ids, [item for s in splits for item in s.prefix_items], audio)
    decoder = model.llm.get_base_model().get_decoder()
    cache = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=True).past_key_values
    return PrefixCache([(layer.keys, layer.values) for layer in cache.layers], mask, mask.sum(1))


def run_suffixes(model: ATFLRecModel, prefix: PrefixCache, rows: Sequence[tuple[int, list[int], list[str]]],
                 audio: AudioTokenSource) -> PassOutput:
    """Candidate suffixes ``(query index, token ids, audio items)`` on their query's prefix cache."""
    device = prefix.mask.device
    owner = torch.tensor([r[0] for r in rows], device=device)
    decoder = model.llm.get_base_model().get_decoder()
    # A fresh cache per pass: the forward appends the suffix keys/values to it in place.
    cache = DynamicCache([(k[owner], v[owner]) for k, v in prefix.keys_values], config=decoder.config)
    ids, mask = _pad([r[1] for r in rows], _pad_id(model), device)
    embeds = embed(model, ids, [item for r in rows for item in r[2]], audio)
    attention = torch.cat([prefix.mask[owner], mask], dim=1)
    positions = prefix.lengths[owner].unsqueeze(1) + torch.arange(ids.shape[1], device=device)
    states = decoder(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                     past_key_values=cache, use_cache=True).last_hidden_state
    hidden = states[torch.arange(len(rows), device=device), mask.sum(1) - 1]
    return PassOutput(margin=answer_margin(model.llm.get_output_embeddings(), hidden, model.answer_ids), hidden=hidden)


@torch.inference_mode()
def score_queries(model: ATFLRecModel, queries: Sequence[Query], audio_items: Container[str],
                  audio: AudioTokenSource, rows_per_pass: int = 32) -> list[np.ndarray]:
    """P(Yes) of every query's candidates, in order, with each prefix run once per adapter.

    Late-fusion strategies run one prefix per adapter: the text and the audio adapter see
    different prompts and give different keys and values.
    """
    outputs: dict[str, PassOutput] = {}
    for adapter in model.adapters:
        if model.llm.active_adapter != adapter:
            model.llm.set_adapter(adapter, inference_mode=True)
        splits = split_prompts(model, queries, prompt_kind(adapter), audio_items)
        prefix = run_prefixes(model, splits, audio)
        rows = [(i, ids, items) for i, s in enumerate(splits) for ids, items in zip(s.suffix_ids, s.suffix_items)]
        passes = [run_suffixes(model, prefix, rows[start:start + rows_per_pass], audio)
                  for start in range(0, len(rows), rows_per_pass)]
        outputs[adapter] = PassOutput(torch.cat([p.margin for p in passes]), torch.cat([p.hidden for p in passes]))
    history = torch.cat([history_logit([q.history] * len(q.targets)) for q in queries])
    scores = probability(model.fusion.combine(outputs, history)).cpu().numpy()
    return np.split(scores, np.cumsum([len(q.targets) for q in queries])[:-1])
