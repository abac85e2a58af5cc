"""Matrix factorisation: logistic MF on the labelled (user, item) pairs of the training rows."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from atflrec.baselines.base import RECOMMENDERS, Context, Recommender, Row, Vocabulary, labelled_pairs
from atflrec.baselines.torch_fit import TorchSettings, bce, fit_full_batch


def embedding(count: int, dim: int, std: float = 0.1) -> nn.Embedding:
    """An embedding whose row 0 (unseen ids) stays zero and never trains."""
    table = nn.Embedding(count, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=std)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


class LogisticMF(nn.Module):
    """logit = b + b_u + b_i + <p_u, q_i>."""

    def __init__(self, users: int, items: int, dim: int) -> None:
        super().__init__()
        self.user, self.item = embedding(users, dim), embedding(items, dim)
        self.user_bias, self.item_bias = embedding(users, 1, 0.0), embedding(items, 1, 0.0)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user(users) * self.item(items)).sum(-1)
        return self.bias + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1) + dot


class PairRecommender(Recommender):
    """A model of (user id, item id) pairs: ids come from the labelled pairs of the training rows
    (targets and histories) only; it trains full-batch on cross-entropy over every pair and scores
    the sigmoid of its logit. Subclasses build the module."""

    Settings = TorchSettings

    @abstractmethod
    def build_module(self, pairs: list[tuple[str, str, int]]) -> nn.Module:
        """The module for these pairs (``self.users`` / ``self.items`` are set; the seed is too)."""

    def fit(self, rows: Sequence[Row], context: Context) -> None:
        pairs = labelled_pairs(rows)
        self.users = Vocabulary(u for u, _, _ in pairs)
        self.items = Vocabulary(i for _, i, _ in pairs)
        torch.manual_seed(context.seed)
        self.model = self.build_module(pairs)
        users = torch.from_numpy(self.users(u for u, _, _ in pairs))
        items = torch.from_numpy(self.items(i for _, i, _ in pairs))
        labels = torch.tensor([float(y) for _, _, y in pairs])
        fit_full_batch(self.model, lambda: bce(self.model(users, items), labels), len(pairs), self.settings)

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> np.ndarray:
        users = torch.from_numpy(self.users(r["user_id"] for r in rows))
        items = torch.from_numpy(self.items(r["item_id"] for r in rows))
        return torch.sigmoid(self.model(users, items)).numpy()


@RECOMMENDERS.register("mf")
class MatrixFactorisation(PairRecommender):
    """Logistic MF (cross-entropy on likes vs dislikes) over every labelled pair of the training
    rows, targets and histories. Users and items get ids from those pairs only."""

    cold_start = "zero item embedding and bias: global bias + the user's bias (items tie per user)"

    def build_module(self, pairs: list[tuple[str, str, int]]) -> nn.Module:
        return LogisticMF(len(self.users), len(self.items), self.settings.dim)
