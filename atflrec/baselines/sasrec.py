"""SASRec's self-attentive encoder over the history inside each sample, read at the target.

SASRec (Kang & McAuley, 2018) predicts the next item of an implicit sequence. Samples here carry
labelled histories (liked and disliked items before the target) and ask for P(like target), so
the encoder reads one sequence per sample -- ``[target, liked..., disliked...]``, each token an item
embedding plus a feedback embedding (target / liked / disliked) plus a recency position -- and a
linear layer on the target token's output gives the logit (the Behavior Sequence Transformer's way
of using SASRec's encoder for click-through prediction). The user is only their history, so users
never seen in training are scored like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field
from torch import nn

from atflrec.baselines.base import RECOMMENDERS, Context, Recommender, Row, Vocabulary, labelled_pairs, labels_of
from atflrec.baselines.mf import embedding
from atflrec.baselines.torch_fit import TorchSettings, bce, fit_full_batch

PAD, TARGET, LIKED, DISLIKED = range(4)  # feedback ids


class SASRecSettings(TorchSettings):
    l2: float = Field(0.0, ge=0, description="L2 penalty on all weights; SASRec regularises by dropout instead")
    heads: int = Field(2, ge=1, description="attention heads (must divide dim)")
    layers: int = Field(1, ge=1, description="self-attention blocks")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout in the attention blocks")
    history_len: int = Field(10, ge=1, description="most recent liked and disliked items kept, each")


class SASRecModule(nn.Module):
    def __init__(self, items: int, settings: SASRecSettings) -> None:
        super().__init__()
        dim = settings.dim
        self.item = embedding(items, dim)  # 0: unseen item (zero vector: the token is its feedback only)
        self.feedback = nn.Embedding(4, dim)
        self.position = nn.Embedding(settings.history_len + 1, dim)
        block = nn.TransformerEncoderLayer(dim, settings.heads, 2 * dim, settings.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, settings.layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, 1)

    def forward(self, items: torch.Tensor, feedback: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        tokens = self.item(items) + self.feedback(feedback) + self.position(positions)
        states = self.encoder(tokens, src_key_padding_mask=feedback == PAD)
        return self.out(states[:, 0]).squeeze(-1)


@RECOMMENDERS.register("sasrec")
class SASRec(Recommender):
    """Item ids come from the training rows' targets and histories."""

    Settings = SASRecSettings
    cold_start = "zero item embedding: the target token is only the target marker, so the history alone sets the score"

    def fit(self, rows: Sequence[Row], context: Context) -> None:
        self.items = Vocabulary(i for _, i, _ in labelled_pairs(rows))
        torch.manual_seed(context.seed)
        self.model = SASRecModule(len(self.items), self.settings)
        inputs = self.encode(rows)
        labels = torch.from_numpy(labels_of(rows)).float()
        fit_full_batch(self.model, lambda: bce(self.model(*inputs), labels), len(rows), self.settings)

    def encode(self, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Item ids, feedback ids and recency positions ``[rows, 1 + longest history]`` (0-padded)."""
        keep = self.settings.history_len
        width = 1 + max((min(len(r["liked_ids"]), keep) + min(len(r["disliked_ids"]), keep) for r in rows), default=0)
        items = np.zeros((len(rows), width), dtype=np.int64)
        feedback = np.zeros_like(items)
        positions = np.zeros_like(items)
        for n, row in enumerate(rows):
            liked, disliked = list(row["liked_ids"])[-keep:], list(row["disliked_ids"])[-keep:]
            ids = [row["item_id"], *liked, *disliked]
            items[n, : len(ids)] = self.items(ids)
            feedback[n, : len(ids)] = [TARGET] + [LIKED] * len(liked) + [DISLIKED] * len(disliked)
            # Recency within each list: 1 = most recent; the target is position 0.
            positions[n, : len(ids)] = [0, *range(len(liked), 0, -1), *range(len(disliked), 0, -1)]
        return torch.from_numpy(items), torch.from_numpy(feedback), torch.from_numpy(positions)

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> np.ndarray:
        return torch.sigmoid(self.model(*self.encode(rows))).numpy()
