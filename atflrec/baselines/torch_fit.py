"""Full-batch training for the small torch baselines (few-shot data fits in one batch)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from atflrec.config import StrictModel


class TorchSettings(StrictModel):
    dim: int = Field(32, ge=1, description="embedding size")
    epochs: int = Field(200, ge=1, description="full-batch Adam steps")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    l2: float = Field(
        1.0, ge=0,
        description="L2 penalty on all weights, summed (lambda * ||w||^2 / examples): few shots overfit fast")


def fit_full_batch(module: torch.nn.Module, loss: Callable[[], torch.Tensor], examples: int,
                   settings: TorchSettings) -> list[float]:
    """Minimise ``loss() + l2 * ||weights||^2 / examples`` with Adam; returns the loss per step.

    The penalty is the classic MF objective divided by the example count (so ``loss`` is a mean);
    it is part of the gradient, unlike Adam's weight decay, whose normalised steps would shrink
    rarely-seen embeddings to zero. Leaves the module in eval mode.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    module.train()
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small gain nothing from threads; on a busy machine they cost 4x
    try:
        for _ in range(settings.epochs):
            optimizer.zero_grad(set_to_none=True)
            value = loss()
            total = value + settings.l2 * sum((p * p).sum() for p in params) / max(examples, 1)
            total.backward()
            optimizer.step()
            history.append(float(value.detach()))
    finally:
        torch.set_num_threads(threads)
    module.eval()
    return history


def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
