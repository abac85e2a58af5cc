"""Audio encoder: FBank frames → frame MLP with SiLU → pooling over time → k soft tokens.

Input is a plain tensor ``[batch, frames, n_mels]`` with a boolean ``[batch, frames]`` mask of the
real (unpadded) frames; output is ``[batch, k, hidden]`` in the LLM's embedding space.
A pooling is one class in :data:`POOLINGS`; adding one there makes it selectable by name.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from atflrec.config import StrictModel
from atflrec.registry import Registry

POOLINGS: Registry[type[Pooling]] = Registry("pooling")


class Pooling(nn.Module):
    """Reduces ``[batch, frames, width]`` (with a ``[batch, frames]`` mask) to ``[batch, out_dim]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_dim = width

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@POOLINGS.register("mean")
class MeanPooling(Pooling):
    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(frames.dtype)
        return (frames * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@POOLINGS.register("max")
class MaxPooling(Pooling):
    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return frames.masked_fill(~mask.unsqueeze(-1), torch.finfo(frames.dtype).min).amax(1)


@POOLINGS.register("attention")
class AttentionPooling(Pooling):
    """A learned score per frame, softmax over the real frames, weighted sum."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.score = nn.Linear(width, 1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(frames).squeeze(-1).masked_fill(~mask, torch.finfo(frames.dtype).min)
        return (scores.softmax(-1).unsqueeze(-1) * frames).sum(1)


@POOLINGS.register("mean_max")
class MeanMaxPooling(Pooling):
    """Mean and max side by side (twice the width)."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.out_dim = 2 * width
        self.mean, self.max = MeanPooling(width), MaxPooling(width)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean(frames, mask), self.max(frames, mask)], dim=-1)


class AudioEncoderConfig(StrictModel):
    """Shape of the audio encoder (``n_mels`` must match a Mel-bin count in the feature store)."""

    n_mels: int = Field(80, ge=1, description="Mel filter banks per frame (the paper's best: 80)")
    layers: int = Field(2, ge=1, description="fully connected SiLU layers applied to every frame")
    width: int = Field(256, ge=1, description="width of the frame layers")
    pooling: str = Field("max", description="pooling over time: " + ", ".join(POOLINGS) + " (paper's best: max)")
    tokens_per_item: int = Field(1, ge=1, description="soft tokens per item (k placeholders after each title)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each frame layer")

    @field_validator("pooling")
    @classmethod
    def _known_pooling(cls, value: str) -> str:
        return POOLINGS.validate(value)


class AudioEncoder(nn.Module):
    def __init__(self, config: AudioEncoderConfig, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        # Global per-bin normalisation (Kaldi's global CMVN), fitted on training features: log-Mel
        # energies sit far from zero, and a per-frame norm would erase loudness, which carries signal.
        self.register_buffer("feature_mean", torch.zeros(config.n_mels))
        self.register_buffer("feature_std", torch.ones(config.n_mels))
        layers: list[nn.Module] = []
        in_dim = config.n_mels
        for _ in range(config.layers):
            layers += [nn.Linear(in_dim, config.width), nn.SiLU(), nn.Dropout(config.dropout)]
            in_dim = config.width
        self.frames = nn.Sequential(*layers)
        self.pool = POOLINGS[config.pooling](config.width)
        self.project = nn.Linear(self.pool.out_dim, config.tokens_per_item * hidden_size)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[batch, frames, n_mels]`` → ``[batch, tokens_per_item, hidden]``."""
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        features = features.to(self.feature_mean.dtype)  # the module may run in bf16 (DeepSpeed)
        normalised = (features - self.feature_mean) / self.feature_std
        pooled = self.pool(self.frames(normalised), mask)
        return self.project(pooled).view(-1, self.config.tokens_per_item, self.hidden_size)

    def fit_normalisation(self, clips: Iterable[np.ndarray], min_std: float = 1e-3) -> None:
        """Set the per-bin mean and std from ``[frames, n_mels]`` clips (the training items')."""
        frames = np.concatenate([np.asarray(c, dtype=np.float64) for c in clips], axis=0)
        if frames.shape[0] == 0:
            return
        self.feature_mean.copy_(torch.from_numpy(frames.mean(0)))
        self.feature_std.copy_(torch.from_numpy(np.maximum(frames.std(0), min_std)))
