"""Shared-prefix scoring, the prompt side: one history, many candidates; what every candidate's
prompt shares is cut off as the query's prefix.

Each candidate's prompt is rendered and tokenized in full, exactly as the offline
:class:`~atflrec.model.batch.Collator` does; the tokens every candidate of a query shares (the
instruction and the history, up to where the target starts) are its prefix. The model runs them
(:meth:`atflrec.model.network.ATFLRecModel.score_queries`): per adapter, the prefix once with its
key/value cache kept, then each candidate only its own tokens on that cache, at the positions they
have in the full prompt, through the same embedding, decoder call and answer read-out as training.
Token ids and positions are the full prompt's, so scores equal the full-prompt path up to
floating-point rounding.
"""

from __future__ import annotations

import os
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from atflrec.model.batch import AUDIO
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


def split_prompts(model: Any, queries: Sequence[Query], kind: str,
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


def pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[n, max_len]`` and their mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)
