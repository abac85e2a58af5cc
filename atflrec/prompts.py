"""Instruction prompts in the TALLRec setting, with audio placeholder tokens after item titles.

A sample becomes one user message: the instruction, then the input listing liked and disliked
history titles and the target title. In an audio prompt each title is followed by ``k`` copies of
:data:`AUDIO_TOKEN`; the model later overwrites the embeddings at exactly those positions with the
audio encoder's soft tokens. The message goes through the tokenizer's chat template when it has one
(Alpaca-style ``### Instruction/Input/Response`` otherwise), so the answer ("Yes"/"No") is the next
token after the prompt.

Item text (titles, from datasets, importers and uploads alike) never becomes a control token: every
title passes :func:`item_text` here, the one place item text enters a prompt. It turns control
characters into spaces and breaks every string the tokenizer would read as a special or added token
(``<|audio|>``, ``<|im_end|>``, ...) with a zero-width space after its first character, so the title
is kept, readable, and tokenised as plain text. ``atflrec data validate`` warns about such titles.

Why a new special token instead of a reserved one: added to the tokenizer as a special token it is
one id that byte-pair merges can never split or fuse with neighbouring text, whatever the model.
Its id never reaches the embedding table (those positions are overwritten before the first layer),
so the base model is not resized and stays byte-identical to the published weights.
"""

from __future__ import annotations

import re
import string
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from atflrec.config import StrictModel

AUDIO_TOKEN = "<|audio|>"
DEFAULT_INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target "
    'song by answering "Yes." or "No.".'
)
DEFAULT_INPUT = (
    "User Preference: {liked}\nUser Unpreference: {disliked}\n"
    "Whether the user will like the target song {target}?"
)
ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
BREAK = "\u200b"  # zero-width space: splits a reserved string so no tokenizer can match it
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# What validation flags without a tokenizer: <|anything|>, <tag>-like markers and control characters.
TOKEN_LIKE = re.compile(r"<\|[^<>|]{0,64}\|>|</?[A-Za-z_][\w.-]{0,63}>|[\x00-\x1f\x7f-\x9f]")


class PromptConfig(StrictModel):
    """How a sample is worded; ``{liked}``, ``{disliked}`` and ``{target}`` are filled per sample."""

    instruction: str = Field(DEFAULT_INSTRUCTION, description="task instruction (first part of the user message)")
    input_template: str = Field(DEFAULT_INPUT, description="input text with {liked}, {disliked} and {target}")
    item_template: str = Field('"{title}"', description="how one item title is written")
    item_separator: str = Field(", ", description="between items of a list")
    system: str | None = Field(None, description="system message; unset keeps the chat template's default")
    use_chat_template: bool = Field(True, description="use the tokenizer's chat template when it has one")
    max_title_chars: int = Field(80, ge=8, description="titles are cut to this many characters")

    @field_validator("input_template")
    @classmethod
    def _fields_once(cls, value: str) -> str:
        fields = template_fields(value)
        if sorted(fields) != sorted(INPUT_FIELDS):
            raise ValueError(f"must use each of {{liked}}, {{disliked}}, {{target}} exactly once; found {fields}")
        return value


INPUT_FIELDS = ("liked", "disliked", "target")


def template_fields(template: str) -> list[str]:
    """The replacement fields of a format string, in the order they appear."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


@dataclass(frozen=True)
class Prompt:
    """Rendered prompt text and, in placeholder order, the items whose audio fills them."""

    text: str
    audio_item_ids: tuple[str, ...]


def reserved_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every string the tokenizer reads as a special or added token (the audio token included), longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    found |= {getattr(t, "content", str(t)) for t in added.values()}
    found.add(AUDIO_TOKEN)
    return tuple(sorted((t for t in found if t), key=len, reverse=True))


def item_text(text: str, reserved: Sequence[str], max_chars: int) -> str:
    """Item text as it may enter a prompt: one line, at most ``max_chars`` characters, and no reserved
    string left whole (each is broken by a zero-width space after its first character)."""
    text = " ".join(_CONTROL.sub(" ", text).split())[:max_chars]
    for token in reserved:
        if len(token) > 1 and token in text:
            text = text.replace(token, token[0] + BREAK + token[1:])
    return text


def add_audio_token(tokenizer: Any) -> int:
    """Register :data:`AUDIO_TOKEN` as a special token (idempotent); returns its id."""
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)


def wrap_message(instruction: str, body: str, tokenizer: Any, config: PromptConfig) -> str:
    """The full prompt text around instruction and input, ending where the answer starts.

    A trailing space is cut: byte-level BPE vocabularies fold it into the next word, so the answer
    token is then " Yes" (see :func:`atflrec.model.scoring.yes_no_token_ids`).
    """
    if config.use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": config.system}] if config.system is not None else []
        messages.append({"role": "user", "content": instruction + "\n\n" + body})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = ALPACA_TEMPLATE.format(instruction=instruction, input=body)
    return text.rstrip(" ")


def render_prompt(
    sample: dict[str, Any],
    tokenizer: Any,
    config: PromptConfig,
    audio_tokens: int = 0,
    audio_items: Container[str] = (),
) -> Prompt:
    """Render one sample row (see :mod:`atflrec.samples`).

    ``audio_tokens`` placeholders follow each title whose item id is in ``audio_items``; with
    ``audio_tokens=0`` the prompt is text-only.
    """
    placed: list[str] = []
    reserved = reserved_strings(tokenizer)

    def item(item_id: str, title: str) -> str:
        text = config.item_template.format(title=item_text(title, reserved, config.max_title_chars))
        if audio_tokens and item_id in audio_items:
            placed.append(item_id)
            text += " " + AUDIO_TOKEN * audio_tokens
        return text

    def items(ids: Sequence[str], titles: Sequence[str]) -> str:
        return config.item_separator.join(item(i, t) for i, t in zip(ids, titles))

    parts = {
        "liked": lambda: items(sample["liked_ids"], sample["liked_titles"]),
        "disliked": lambda: items(sample["disliked_ids"], sample["disliked_titles"]),
        "target": lambda: item(sample["item_id"], sample["title"]),
    }
    # Render in the template's field order so `placed` follows the placeholders' order in the text.
    filled = {name: parts[name]() for name in template_fields(config.input_template)}
    body = config.input_template.format(**filled)
    return Prompt(wrap_message(config.instruction, body, tokenizer, config), tuple(placed))
