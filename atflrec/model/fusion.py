"""Fusion strategies: how adapters' outputs become one Yes-vs-No logit margin.

A strategy declares the adapters it needs, the training stages that fit them, and ``combine``,
which maps each adapter's :class:`PassOutput` to the final margin (score = sigmoid(margin), i.e.
the softmax over the Yes/No logits). Adding a strategy is one registered class in this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from atflrec.config import StrictModel
from atflrec.model.adapters import ADAPTER_SEES_AUDIO
from atflrec.registry import Registry

STRATEGIES: Registry[type[FusionStrategy]] = Registry("fusion strategy")


@dataclass(frozen=True)
class PassOutput:
    """One adapter's forward pass, read at the answer position."""

    margin: torch.Tensor  # [batch] logit(Yes) - logit(No)
    hidden: torch.Tensor  # [batch, hidden] final (normed) hidden state


@dataclass(frozen=True)
class Stage:
    """One training stage: what it trains. ``adapter`` set: the loss is that adapter's own margin;
    ``adapter`` None: every adapter runs frozen and the loss is on the strategy's combined margin."""

    name: str
    adapter: str | None
    train_encoder: bool
    train_fusion: bool


class FusionStrategy(nn.Module):
    adapters: ClassVar[tuple[str, ...]]
    lora_mode: ClassVar[str]  # "shared" or "separate", for reports

    def __init__(self, config: FusionConfig, hidden_size: int) -> None:
        super().__init__()

    @classmethod
    def stages(cls) -> list[Stage]:
        """The training stages, in order (a class property: known before any model is built)."""
        raise NotImplementedError

    def combine(self, outputs: dict[str, PassOutput], history: torch.Tensor | None = None) -> torch.Tensor:
        """The final margin from each adapter's output (``history``: the rows' history logits,
        see :func:`atflrec.model.batch.history_logit`; only late fusion with ``history_share`` reads it)."""
        raise NotImplementedError


class SingleAdapter(FusionStrategy):
    """One adapter scores alone, trained in one stage (with the encoder when its prompts carry audio)."""

    @classmethod
    def stages(cls) -> list[Stage]:
        (name,) = cls.adapters
        return [Stage(name, name, train_encoder=ADAPTER_SEES_AUDIO[name], train_fusion=False)]

    def combine(self, outputs: dict[str, PassOutput], history: torch.Tensor | None = None) -> torch.Tensor:
        return outputs[self.adapters[0]].margin


@STRATEGIES.register("early")
class EarlyFusion(SingleAdapter):
    """One shared adapter reads titles and audio tokens in the same prompt."""

    adapters = ("shared",)
    lora_mode = "shared"


@STRATEGIES.register("text_only")
class TextOnly(SingleAdapter):
    """The TALLRec baseline: one text adapter on text-only prompts, no audio."""

    adapters = ("text",)
    lora_mode = "text"


@STRATEGIES.register("audio_only")
class AudioOnly(SingleAdapter):
    """The audio adapter alone (with the encoder), on prompts with audio tokens after the titles:
    the second half of the separate configuration, scored without the text adapter."""

    adapters = ("audio",)
    lora_mode = "audio"


class LateFusion(FusionStrategy):
    """Text and audio adapters trained one after the other, each as its own scorer, then fused.

    With ``history_share`` the fused margin also gets ``w * history`` (``w`` learned in the fusion
    stage, starting at 0): the history's like share, which the prompt lists but a few-shot adapter
    may not learn to count, and which the non-LLM content baseline sees too.
    """

    adapters = ("text", "audio")
    lora_mode = "separate"

    def __init__(self, config: FusionConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.history_weight = nn.Parameter(torch.zeros(1)) if config.history_share else None

    def history_term(self, history: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
        if self.history_weight is None:
            return 0.0
        if history is None:
            raise ValueError("this model fuses the history's like share, but the batch carries no history logits")
        return self.history_weight * history.to(like.dtype)

    @classmethod
    def stages(cls) -> list[Stage]:
        return [
            Stage("text", "text", train_encoder=False, train_fusion=False),
            Stage("audio", "audio", train_encoder=True, train_fusion=False),
            Stage("fusion", None, train_encoder=False, train_fusion=True),
        ]


@STRATEGIES.register("late_weighted")
class LateWeighted(LateFusion):
    """margin = w_text * m_text + w_audio * m_audio + b, starting as the plain average."""

    def __init__(self, config: FusionConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.weights = nn.Parameter(torch.full((2,), 0.5))
        self.bias = nn.Parameter(torch.zeros(1))  # 1-d: DeepSpeed cannot broadcast 0-d parameters

    def combine(self, outputs: dict[str, PassOutput], history: torch.Tensor | None = None) -> torch.Tensor:
        margins = torch.stack([outputs["text"].margin, outputs["audio"].margin], dim=-1)
        fused = margins.to(self.weights.dtype) @ self.weights + self.bias
        return fused + self.history_term(history, fused)


@STRATEGIES.register("late_head")
class LateHead(LateFusion):
    """A small MLP on both adapters' answer hidden states, added to the average margin.

    The head's last layer starts at zero, so before fusion training the strategy scores exactly
    like the average of the two adapters; the head learns corrections from the hidden states.
    """

    def __init__(self, config: FusionConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_size, config.head_hidden), nn.SiLU(), nn.Linear(config.head_hidden, 1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def combine(self, outputs: dict[str, PassOutput], history: torch.Tensor | None = None) -> torch.Tensor:
        text, audio = outputs["text"], outputs["audio"]
        dtype = self.head[0].weight.dtype
        features = torch.cat([text.hidden, audio.hidden], dim=-1).to(dtype)
        fused = (text.margin + audio.margin).to(dtype) / 2 + self.head(features).squeeze(-1)
        return fused + self.history_term(history, fused)


class FusionConfig(StrictModel):
    strategy: str = Field(
        "late_weighted",
        description="fusion strategy: " + ", ".join(STRATEGIES) + " (the paper's best: separate adapters, fused late)",
    )
    head_hidden: int = Field(64, ge=1, description="hidden width of the late_head MLP")
    history_share: bool = Field(
        False, description="late fusion also weighs the history's like share (learned weight, starting at 0)")
    fit_on: Literal["train", "validation"] = Field(
        "train", description="rows the fusion stage trains on: the adapters' own training rows, or the held-out "
                             "validation rows (stacking: an adapter is over-confident on the rows it was trained "
                             "on); then the fusion stage's validation score is taken on the rows it fitted, "
                             "optimistic for late_head's MLP (late_weighted fits four numbers)")

    @field_validator("strategy")
    @classmethod
    def _known(cls, value: str) -> str:
        return STRATEGIES.validate(value)

    @model_validator(mode="after")
    def _fusion_settings_need_a_fusion_stage(self) -> FusionConfig:
        """history_share and fit_on act in a fusion stage only: a single-adapter strategy would
        train as if they were unset, and a comparison with them set would change two things at once."""
        if _has_fusion_stage(self.strategy):
            return self
        defaults = type(self).model_fields
        set_here = [f"{key}: {getattr(self, key)!r}" for key in ("history_share", "fit_on")
                    if getattr(self, key) != defaults[key].default]
        if set_here:
            raise ValueError(f"{', '.join(set_here)}: strategy {self.strategy!r} has no fusion stage for it to act in "
                             f"(strategies with one: {', '.join(s for s in STRATEGIES if _has_fusion_stage(s))})")
        return self


def _has_fusion_stage(strategy: str) -> bool:
    return any(stage.train_fusion for stage in STRATEGIES[strategy].stages())


def stage_rows(stage: Stage, config: FusionConfig, train: Sequence[Any], validation: Sequence[Any] | None,
               rank: int = 0, world: int = 1) -> list[Any]:
    """The rows ``stage`` trains on (this rank's share of them): the training rows, except for a
    fusion stage with ``fit_on: validation`` and validation rows to fit on. Every rank gets as many
    validation rows (a remainder is left out), so all take the same number of optimizer steps."""
    if stage.train_fusion and config.fit_on == "validation" and validation:
        usable = len(validation) // world * world
        return list(validation)[rank:usable:world]
    return list(train)


def build_strategy(config: FusionConfig, hidden_size: int) -> FusionStrategy:
    return STRATEGIES[config.strategy](config, hidden_size)
