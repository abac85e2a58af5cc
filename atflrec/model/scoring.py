"""Answer tokens and scores: P(Yes) from the Yes/No logits at the answer position."""

from __future__ import annotations

from typing import Any

import torch

from atflrec.prompts import PromptConfig, wrap_message

ANSWERS = ("Yes", "No")


def yes_no_token_ids(tokenizer: Any, config: PromptConfig) -> tuple[int, int]:
    """Ids of the first token of "Yes" and of "No" as they follow a rendered prompt.

    After a prompt ending in a newline the answer is written "Yes"; after any other character it is
    " Yes" (prompts never end in a space). Encoding the prompt's ending with and without the answer
    and taking the first new token gives the id this tokenizer produces in that position.
    """
    context = wrap_message("x", "y", tokenizer, config)
    separator = "" if context[-1:].isspace() else " "
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = []
    for word in ANSWERS:
        full = tokenizer(context + separator + word, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"the tokenizer merges {word!r} into the prompt's last token; cannot score it")
        ids.append(full[len(base)])
    if ids[0] == ids[1]:
        raise ValueError(f"'Yes' and 'No' start with the same token ({ids[0]}); cannot score")
    return ids[0], ids[1]


def answer_margin(lm_head: torch.nn.Module, hidden: torch.Tensor, answer_ids: tuple[int, int]) -> torch.Tensor:
    """logit(Yes) - logit(No) from answer-position hidden states ``[batch, hidden]``."""
    logits = lm_head(hidden)[:, list(answer_ids)].float()
    return logits[:, 0] - logits[:, 1]


def probability(margin: torch.Tensor) -> torch.Tensor:
    """P(Yes) = softmax over the two answer logits = sigmoid(margin)."""
    return torch.sigmoid(margin.float())


def answer_loss(margin: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the two answer tokens (label 1 = "Yes")."""
    return torch.nn.functional.binary_cross_entropy_with_logits(margin.float(), labels.float())
