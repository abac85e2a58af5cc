"""The LLM recommenders -- text-only (TALLRec), audio-only and ATFLRec -- behind the common interface.

Each trains the stages of its fusion strategy with the one stage loop
(:class:`~atflrec.training.loop.StageLoop`) and scores P(Yes). An adapter's stage selects on the
context's validation rows (the first ``max_val_samples``), as TALLRec does: scored every
``optim.eval_every`` epochs, stopped after ``optim.patience`` evaluations without improvement, the
best evaluation's adapter restored.

Work is shared through the run's memo (``Context.shared``), keyed by everything that determines it:
- a trained adapter (with the encoder, if its stage trains it) is keyed by the adapter's name,
  base model, prompt, LoRA settings, encoder settings (audio adapters only), optimiser, precision,
  seed, the training rows and the validation rows. So the ``separate`` configuration's text adapter *is* the text-only
  model (same rows, seed, prompts and optimiser: the method trains it alone, before the audio
  adapter), its audio adapter is the audio-only model, and ablations that change only the audio
  side (pooling, Mel bins, fusion) reuse the text adapter. Whichever model needs a stage first
  trains it. (Initial LoRA weights come from the seed but also from the order in which a model
  creates its adapters, so a shared adapter is one of the equally valid draws, not bit-for-bit the
  one a lone run would have drawn.)
- an adapter's answer-position outputs on a set of rows are keyed by the adapter's key and the rows:
  the fusion stage trains on frozen adapters, so it reads their cached outputs instead of running
  the LLM once per epoch, and models that share an adapter share its scoring pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from atflrec.baselines.base import RECOMMENDERS, Context, Recommender, Row, rows_key
from atflrec.config import StrictModel
from atflrec.console import say
from atflrec.model.adapters import ADAPTER_SEES_AUDIO
from atflrec.model.batch import AUDIO, Batch, history_logit
from atflrec.model.fusion import PassOutput, Stage, stage_rows
from atflrec.model.network import ATFLRecModel, ModelConfig, prompt_kind
from atflrec.model.scoring import probability
from atflrec.training.local import (
    OptimConfig,
    autocast,
    build_model,
    fit_audio_normalisation,
    make_batches,
    make_collator,
    resolve_device,
)
from atflrec.training.loop import StageLoop


def _indented(message: str) -> None:
    """The stage loop's lines (early stop, best epoch restored), under the evaluation's job line."""
    say(f"  {message}")


def _stage_summary(stage: str, evaluations: Sequence[dict[str, Any]]) -> str:
    last = evaluations[-1]
    line = f"stage {stage}: {last['epoch']} epochs, train loss {last['train_loss']:.3f}"
    aucs = [e.get("val_auc") for e in evaluations]
    if any(a is not None for a in aucs):
        line += ", val AUC by evaluation " + " ".join("-" if a is None else f"{a:.3f}" for a in aucs)
        line += f", kept epoch {last['best_epoch']}"
    return line


class LLMSettings(StrictModel):
    fixed_strategy: ClassVar[str | None] = None

    model: ModelConfig = Field(
        default_factory=ModelConfig, description="the model (base model, prompt, encoder, LoRA, fusion)")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimisation, per stage")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocasts the forward pass")
    device: str = Field("auto", description="torch device; auto picks cuda when available")
    eval_batch_size: int = Field(16, ge=1, description="samples per scoring batch")
    max_val_samples: int | None = Field(
        100, ge=1, description="validation rows each adapter's training selects on (the first of the "
                               "context's); the optim section's eval_every and patience act on them")

    @model_validator(mode="before")
    @classmethod
    def _strategy(cls, data: Any) -> Any:
        """Text-only and audio-only models have one possible fusion strategy: default to it."""
        if cls.fixed_strategy is None or not isinstance(data, dict):
            return data
        model = data.get("model") or {}
        model = model.model_dump() if isinstance(model, ModelConfig) else dict(model)
        fusion = dict(model.get("fusion") or {})
        strategy = fusion.setdefault("strategy", cls.fixed_strategy)
        if strategy != cls.fixed_strategy:
            raise ValueError(f"model.fusion.strategy must be {cls.fixed_strategy!r} for this model, not {strategy!r}")
        return {**data, "model": {**model, "fusion": fusion}}


class TextLLMSettings(LLMSettings):
    fixed_strategy = "text_only"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(fusion={"strategy": "text_only"}))


class AudioLLMSettings(LLMSettings):
    fixed_strategy = "audio_only"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(fusion={"strategy": "audio_only"}))


def _labels_batch(rows: Sequence[Row]) -> Batch:
    return Batch(prompts={}, labels=torch.tensor([float(r["label"]) for r in rows]),
                 sample_ids=[r["sample_id"] for r in rows], user_ids=[r["user_id"] for r in rows],
                 history_logit=history_logit(rows))


class _CachedPasses(torch.nn.Module):
    """The model with its adapters' outputs read from a cache: what the fusion stage trains on."""

    def __init__(self, model: ATFLRecModel, outputs: dict[str, PassOutput], rows: Sequence[Row]) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs
        self.position = {r["sample_id"]: n for n, r in enumerate(rows)}

    @property
    def fusion(self) -> torch.nn.Module:
        return self.model.fusion

    def configure_stage(self, stage: Stage | None) -> list[torch.nn.Parameter]:
        return self.model.configure_stage(stage)

    def checkpoint_activations(self, enabled: bool) -> None:
        self.model.checkpoint_activations(enabled)

    def forward(self, batch: Batch, stage: Stage | None = None) -> torch.Tensor:
        index = torch.tensor([self.position[s] for s in batch.sample_ids])
        device = batch.labels.device
        picked = {a: PassOutput(o.margin[index].to(device), o.hidden[index].to(device))
                  for a, o in self.outputs.items()}
        history = None if batch.history_logit is None else batch.history_logit.to(device)
        return self.model.fusion.combine(picked, history)


class LLMRecommender(Recommender):
    Settings = LLMSettings
    uses_llm = True
    cold_start = "from its title (and audio tokens, for adapters that hear) in the prompt; no id embedding"

    def fit(self, rows: Sequence[Row], context: Context) -> None:
        settings = self.settings
        self.context = context
        self.train_key = rows_key(rows)
        self.model = build_model(settings.model, context.seed, resolve_device(settings.device))
        hears = AUDIO in self.model.prompt_kinds
        n_mels = settings.model.encoder.n_mels
        features = context.features(n_mels) if hears and context.features is not None else {}
        cited = sorted({i for r in rows for i in [r["item_id"], *r["liked_ids"], *r["disliked_ids"]]})
        fit_audio_normalisation(self.model, cited, features)
        self.collator = make_collator(self.model, features)
        for stage in self.model.fusion.stages():
            if stage.adapter is not None:
                self._fit_adapter(stage, rows)
            else:  # adapters frozen: train on their cached outputs
                fit_rows = stage_rows(stage, settings.model.fusion, rows, self.validation_rows())
                outputs = {a: self.adapter_outputs(a, fit_rows) for a in self.model.adapters}
                # No validation here (the rows it could select on may be the ones it fits), so no patience.
                optim = settings.optim.model_copy(update={"patience": None})
                loop = StageLoop(_CachedPasses(self.model, outputs, fit_rows), stage, fit_rows, _labels_batch,
                                 optim, seed=context.seed, precision=settings.precision, log=_indented)
                _indented(_stage_summary(stage.name, loop.run().evaluations)
                          + f" on {len(fit_rows)} rows (fit_on: {settings.model.fusion.fit_on})")
        self.model.configure_stage(None)
        self.model.eval()

    def adapter_key(self, adapter: str) -> str:
        """Everything that determines how ``adapter`` is trained (see the module docstring)."""
        config = self.settings.model
        return json.dumps({
            "adapter": adapter,
            "base_model": config.base_model,
            "prompt": config.prompt.model_dump(mode="json"),
            "lora": config.lora.model_dump(mode="json"),
            "encoder": config.encoder.model_dump(mode="json") if ADAPTER_SEES_AUDIO[adapter] else None,
            "optim": self.settings.optim.model_dump(mode="json"),
            "precision": self.settings.precision,
            "seed": self.context.seed,
            "rows": self.train_key,
            "validation": rows_key(self.validation_rows()),
        }, sort_keys=True)

    def validation_rows(self) -> list[Row]:
        """The rows each adapter's training selects on (the best validation's adapter is kept)."""
        return list(self.context.validation)[: self.settings.max_val_samples]

    def _fit_adapter(self, stage: Stage, rows: Sequence[Row]) -> None:
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        key = "llm-adapter:" + self.adapter_key(stage.adapter)
        saved = self.context.shared.get(key)
        if saved is None:
            loop = StageLoop(self.model, stage, rows, self.collator, self.settings.optim, seed=self.context.seed,
                             precision=self.settings.precision, val_rows=self.validation_rows(),
                             eval_batch_size=self.settings.eval_batch_size, log=_indented)
            _indented(_stage_summary(stage.name, loop.run().evaluations))
            state = get_peft_model_state_dict(self.model.llm, adapter_name=stage.adapter, save_embedding_layers=False)
            encoder = self.model.encoder.state_dict() if stage.train_encoder else None
            self.context.shared[key] = {
                "adapter": {k: v.detach().cpu().clone() for k, v in state.items()},
                "encoder": None if encoder is None else {k: v.detach().cpu().clone() for k, v in encoder.items()},
            }
            return
        result = set_peft_model_state_dict(self.model.llm, saved["adapter"], adapter_name=stage.adapter)
        if result.unexpected_keys:
            raise RuntimeError(f"shared adapter {stage.adapter!r} has unexpected tensors {result.unexpected_keys[:3]}")
        if saved["encoder"] is not None:
            self.model.encoder.load_state_dict(saved["encoder"])

    @torch.no_grad()
    def adapter_outputs(self, adapter: str, rows: Sequence[Row]) -> PassOutput:
        """``adapter``'s margins and answer hidden states on ``rows`` (memoised for the run)."""
        key = f"llm-outputs:{self.adapter_key(adapter)}:{rows_key(rows)}"
        if key in self.context.shared:
            return self.context.shared[key]
        self.model.configure_stage(None)
        self.model.eval()
        device = next(self.model.parameters()).device
        margins, hidden = [], []
        for chunk in make_batches(rows, self.settings.eval_batch_size):
            inputs = self.collator.prompt_inputs(chunk, prompt_kind(adapter)).to(device)
            with autocast(self.settings.precision, device):
                out = self.model.run_adapter(adapter, inputs)
            margins.append(out.margin.float().cpu())
            hidden.append(out.hidden.float().cpu())
        width = self.model.llm.config.hidden_size
        result = PassOutput(torch.cat(margins) if margins else torch.zeros(0),
                            torch.cat(hidden) if hidden else torch.zeros(0, width))
        self.context.shared[key] = result
        return result

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> np.ndarray:
        if not rows:
            return np.zeros(0)
        device = next(self.model.fusion.parameters(), torch.zeros(())).device
        outputs = {a: self.adapter_outputs(a, rows) for a in self.model.adapters}
        margin = self.model.fusion.combine({a: PassOutput(o.margin.to(device), o.hidden.to(device))
                                            for a, o in outputs.items()}, history_logit(rows).to(device))
        return probability(margin).cpu().numpy()


@RECOMMENDERS.register("text_llm")
class TextLLM(LLMRecommender):
    """TALLRec: one text adapter on text-only prompts (the ``text_only`` strategy)."""

    Settings = TextLLMSettings
    cold_start = "from its title in the prompt; no id embedding"


@RECOMMENDERS.register("audio_llm")
class AudioLLM(LLMRecommender):
    """The audio adapter alone, with the encoder (the ``audio_only`` strategy)."""

    Settings = AudioLLMSettings


@RECOMMENDERS.register("atflrec")
class ATFLRec(LLMRecommender):
    """ATFLRec with any fusion strategy (default: separate adapters fused late, the paper's best)."""
