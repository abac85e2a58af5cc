"""Collating sample rows into model inputs: tokenized prompts plus the audio features they cite.

Prompts are right-padded, so the answer position of row ``b`` is ``attention_mask[b].sum() - 1``
and positions of real tokens do not depend on the batch. Audio features of all placeholder items
are stacked in placeholder order (row by row, left to right) and padded over frames with a mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from atflrec.prompts import PromptConfig, render_prompt

TEXT, AUDIO = "text", "audio"  # prompt kinds


@dataclass(frozen=True)
class PromptInputs:
    input_ids: torch.Tensor  # [batch, tokens]
    attention_mask: torch.Tensor  # [batch, tokens]
    audio: torch.Tensor | None = None  # [items, frames, n_mels], in placeholder order
    audio_mask: torch.Tensor | None = None  # [items, frames], True on real frames

    def to(self, device: torch.device | str) -> PromptInputs:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PromptInputs(move(self.input_ids), move(self.attention_mask), move(self.audio), move(self.audio_mask))


@dataclass(frozen=True)
class Batch:
    prompts: dict[str, PromptInputs]  # by prompt kind
    labels: torch.Tensor  # [batch] float, 1 = liked
    sample_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    history_logit: torch.Tensor | None = None  # [batch] logit of the history's like share (see history_logit)

    def to(self, device: torch.device | str) -> Batch:
        moved = None if self.history_logit is None else self.history_logit.to(device)
        return replace(self, prompts={k: p.to(device) for k, p in self.prompts.items()}, labels=self.labels.to(device),
                       history_logit=moved)


def history_logit(rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Per row, log((liked + 0.5) / (disliked + 0.5)): the history's like share on the logit scale
    (the +0.5 keeps an empty or one-sided history finite). What ``user_rate`` ranks by."""
    liked = torch.tensor([float(len(r["liked_ids"])) for r in rows])
    disliked = torch.tensor([float(len(r["disliked_ids"])) for r in rows])
    return torch.log((liked + 0.5) / (disliked + 0.5))


def stack_audio(arrays: Sequence[np.ndarray], n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``[frames_i, n_mels]`` arrays to ``[items, max_frames, n_mels]`` with a frame mask."""
    frames = max((a.shape[0] for a in arrays), default=1)
    audio = torch.zeros(len(arrays), frames, n_mels)
    mask = torch.zeros(len(arrays), frames, dtype=torch.bool)
    for i, array in enumerate(arrays):
        if array.shape[1] != n_mels:
            raise ValueError(f"audio features have {array.shape[1]} Mel bins; the encoder expects {n_mels}")
        audio[i, : len(array)] = torch.from_numpy(np.asarray(array, dtype=np.float32))
        mask[i, : len(array)] = True
    return audio, mask


class Collator:
    """Turns sample rows (dicts of :data:`atflrec.samples.SAMPLE_SCHEMA`) into a :class:`Batch`.

    ``features`` maps item id → ``[frames, n_mels]`` array; items without features get no
    placeholder. ``kinds`` says which prompt kinds to build (``text``, ``audio``).
    """

    def __init__(self, tokenizer: Any, prompt: PromptConfig, kinds: Sequence[str], tokens_per_item: int,
                 n_mels: int, features: Mapping[str, np.ndarray] | None = None) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.kinds = tuple(kinds)
        self.tokens_per_item = tokens_per_item
        self.n_mels = n_mels
        self.features = features or {}

    def prompt_inputs(self, rows: Sequence[dict[str, Any]], kind: str) -> PromptInputs:
        k = self.tokens_per_item if kind == AUDIO else 0
        prompts = [render_prompt(r, self.tokenizer, self.prompt, k, self.features) for r in rows]
        encoded = self.tokenizer(
            [p.text for p in prompts], add_special_tokens=False, padding=True, padding_side="right",
            return_tensors="pt",
        )
        if kind == TEXT:
            return PromptInputs(encoded["input_ids"], encoded["attention_mask"])
        items = [item for p in prompts for item in p.audio_item_ids]
        audio, mask = stack_audio([self.features[i] for i in items], self.n_mels)
        return PromptInputs(encoded["input_ids"], encoded["attention_mask"], audio, mask)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> Batch:
        return Batch(
            prompts={kind: self.prompt_inputs(rows, kind) for kind in self.kinds},
            labels=torch.tensor([float(r["label"]) for r in rows]),
            sample_ids=[r["sample_id"] for r in rows],
            user_ids=[r["user_id"] for r in rows],
            history_logit=history_logit(rows),
        )
