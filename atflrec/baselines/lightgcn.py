"""LightGCN (He et al., 2020): embeddings smoothed over the user-item graph of liked pairs."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from atflrec.baselines.base import RECOMMENDERS
from atflrec.baselines.mf import PairRecommender, embedding
from atflrec.baselines.torch_fit import TorchSettings


class LightGCNSettings(TorchSettings):
    layers: int = Field(2, ge=0, description="propagation layers; the final embedding averages layers 0..K")


def normalised_adjacency(users: np.ndarray, items: np.ndarray, n_nodes: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the symmetric bipartite graph with edges (users[k], items[k])."""
    rows = np.concatenate([users, items])
    cols = np.concatenate([items, users])
    degree = np.bincount(rows, minlength=n_nodes).astype(np.float32)
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    values = inv_sqrt[rows] * inv_sqrt[cols]
    index = torch.from_numpy(np.stack([rows, cols]))
    with torch.sparse.check_sparse_tensor_invariants():  # opt in explicitly: indices come from our own vocabulary
        return torch.sparse_coo_tensor(index, torch.from_numpy(values), (n_nodes, n_nodes)).coalesce()


class LightGCNModule(nn.Module):
    """Nodes: users 0..U-1, then items U..U+I-1; node 0 of each side stands for unseen ids and is
    kept at zero. logit = b + b_i + <e_u, e_i>, e = mean over layers of Â^k E. The biases are an
    addition to LightGCN, which ranks implicit feedback: here labels are explicit likes and dislikes,
    and without them a user absent from the few training rows would get one score for every item."""

    def __init__(self, n_users: int, n_items: int, dim: int, layers: int, adjacency: torch.Tensor) -> None:
        super().__init__()
        self.n_users, self.layers = n_users, layers
        self.ego = nn.Parameter(torch.randn(n_users + n_items, dim) * 0.1)
        self.bias = nn.Parameter(torch.zeros(()))
        self.item_bias = embedding(n_items, 1, 0.0)
        known = torch.ones(n_users + n_items, 1)
        known[0] = known[n_users] = 0.0
        self.register_buffer("known", known)
        self.adjacency = adjacency

    def propagate(self) -> torch.Tensor:
        layer = self.ego * self.known
        total = layer
        for _ in range(self.layers):
            layer = torch.sparse.mm(self.adjacency, layer)
            total = total + layer
        return total / (self.layers + 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        nodes = self.propagate()
        return self.bias + self.item_bias(items).squeeze(-1) + (nodes[users] * nodes[self.n_users + items]).sum(-1)


@RECOMMENDERS.register("lightgcn")
class LightGCN(PairRecommender):
    """The graph holds the liked pairs of the training rows (targets and histories); every
    labelled pair, liked or disliked, is a training example for a cross-entropy loss."""

    Settings = LightGCNSettings
    cold_start = "no edges, zero embedding and bias: the global bias (every cold item ties)"

    def build_module(self, pairs: list[tuple[str, str, int]]) -> nn.Module:
        liked = [(u, i) for u, i, y in pairs if y == 1]
        edge_users = self.users(u for u, _ in liked)
        edge_items = self.items(i for _, i in liked) + len(self.users)
        n_nodes = len(self.users) + len(self.items)
        return LightGCNModule(len(self.users), len(self.items), self.settings.dim, self.settings.layers,
                              normalised_adjacency(edge_users, edge_items, n_nodes))
