"""``atflrec evaluate``'s configuration: which models, few-shot sizes, seeds, splits and ablations.

Each job of the evaluation is one model variant trained on one few-shot draw (shots, seed) and
scored on every split. A variant is a model's settings, or an ablation's change to them (a dotted
key of the settings set to one value). Settings are validated against the model kind's own
settings class when the config loads, so a bad key names the model and the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from atflrec.config import StrictModel, merge
from atflrec.tracking import TrackingConfig

DEFAULT_VARIANT = "default"


class ModelSpec(StrictModel):
    name: str = Field(description="name in the results and the report (unique)")
    kind: str | None = Field(None, description="recommender kind; unset: the name")
    settings: dict[str, Any] = Field(default_factory=dict, description="the kind's settings (see its Settings class)")
    shots: list[int] | None = Field(None, description="few-shot sizes for this model; unset: the evaluation's")
    seeds: list[int] | None = Field(None, description="seeds for this model; unset: the evaluation's")
    search: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="dotted settings key -> values: every combination is fitted on each draw, the best on the "
                    "validation split is scored (non-LLM models; LLMs select by validation while training)")

    @property
    def resolved_kind(self) -> str:
        return self.kind or self.name

    def search_points(self) -> list[dict[str, Any]]:
        """Every combination of the search grid ([{}] without one), in grid order."""
        from itertools import product

        keys = list(self.search)
        return [dict(zip(keys, values)) for values in product(*(self.search[k] for k in keys))]


class AblationSpec(StrictModel):
    name: str = Field(description="ablation name, e.g. pooling")
    model: str = Field(description="the models[] entry it varies (by name)")
    key: str = Field(description="dotted settings key, e.g. model.encoder.pooling")
    values: list[Any] = Field(min_length=1, description="values of the key, one variant each")
    also: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per value (as written in values), other dotted settings keys that variant needs, e.g. "
                    "{early: {model.fusion.history_share: false}} where the model's settings do not fit the value")
    shots: list[int] | None = Field(None, description="few-shot sizes; unset: the model's")
    seeds: list[int] | None = Field(None, description="seeds; unset: the model's")

    @model_validator(mode="after")
    def _also_names_values(self) -> AblationSpec:
        unknown = sorted(set(self.also) - {str(v) for v in self.values})
        if unknown:
            raise ValueError(f"also: {unknown} are not among values {self.values}")
        return self

    def variant_settings(self, value: Any) -> dict[str, Any]:
        """The dotted settings of the variant for ``value``: the key, and what ``also`` adds for it."""
        return {self.key: value, **self.also.get(str(value), {})}


class QuickSettings(StrictModel):
    """What ``--quick`` shrinks any evaluation to (the demo's smoke run)."""

    shots: list[int] = Field(default_factory=lambda: [16], description="few-shot sizes")
    seeds: list[int] = Field(default_factory=lambda: [0], description="seeds")
    max_eval_samples: int = Field(64, ge=1, description="rows per evaluation split")
    llm_max_steps: int = Field(2, ge=1, description="optimizer steps per LLM training stage")
    ablations: bool = Field(False, description="keep the ablations")


class EvalConfig(StrictModel):
    """``atflrec evaluate``."""

    samples: str | None = Field(None, description="samples directory (from `atflrec samples`); required")
    features: str | None = Field(None, description="feature store (from `atflrec features`); unset: no audio")
    data: str | None = Field(None, description="dataset directory for item titles and tags; unset: the samples' source")
    out: str = Field("runs/eval", description="output directory (results.parquet, report.md, plots)")
    shots: list[int] = Field(
        default_factory=lambda: [16, 64, 256], min_length=1, description="few-shot training set sizes")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, description="seeds: few-shot draw, initialisation, shuffling")
    splits: dict[str, str] = Field(
        default_factory=lambda: {"warm": "test", "cold": "cold"},
        description="report name -> samples split; warm = later interactions with seen items, cold = items never seen",
    )
    max_eval_samples: int | None = Field(
        300, ge=1, description="seeded subsample of each split, the same rows for every model")
    validation_split: str = Field("val", description="samples split that model searches select on (never reported)")
    max_search_points: int = Field(
        8, ge=1, description="most settings a model's search may fit per draw: the same budget for every baseline")
    eval_seed: int = Field(0, description="seed of that subsample")
    llm: dict[str, Any] = Field(
        default_factory=dict, description="settings shared by every LLM model; a model's own settings win key by key")
    models: list[ModelSpec] = Field(min_length=1, description="the models, each trained on every (shots, seed)")
    ablations: list[AblationSpec] = Field(
        default_factory=list, description="variants of one model, one settings key each")
    quick: QuickSettings = Field(default_factory=QuickSettings, description="what --quick shrinks this evaluation to")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="record the evaluation in MLflow (off): a run with the report and plots, one nested run per "
                    "model variant, shots and seed")

    @field_validator("shots", "seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"repeated values in {value}")
        return value

    @field_validator("shots")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(s < 1 for s in value):
            raise ValueError(f"few-shot sizes must be positive, got {value}")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> EvalConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: repeated names in {names}")
        for spec in self.models:
            model_settings(self, spec)  # raises naming the model and key
            _check_search(self, spec)
        for ablation in self.ablations:
            if ablation.model not in names:
                raise ValueError(
                    f"ablations.{ablation.name}.model: no model named {ablation.model!r} (models: {names})")
            spec = next(m for m in self.models if m.name == ablation.model)
            for value in ablation.values:
                model_settings(self, spec, ablation.variant_settings(value), where=f"ablations.{ablation.name}")
        return self


def _check_search(config: EvalConfig, spec: ModelSpec) -> None:
    from atflrec.baselines import RECOMMENDERS

    if not spec.search:
        return
    if RECOMMENDERS[spec.resolved_kind].uses_llm:
        raise ValueError(f"models.{spec.name}.search: LLM models select by validation inside training, not by a search")
    points = spec.search_points()
    if not points or len(points) > config.max_search_points:
        raise ValueError(f"models.{spec.name}.search: {len(points)} settings; give 1 to max_search_points="
                         f"{config.max_search_points} (the same budget for every baseline)")
    for point in points:
        model_settings(config, spec, point, where=f"models.{spec.name}.search")


def model_settings(config: EvalConfig, spec: ModelSpec, changes: dict[str, Any] | None = None,
                   where: str = "") -> StrictModel:
    """The validated settings of ``spec`` (LLM defaults merged in, ``changes`` applied)."""
    from pydantic import ValidationError

    from atflrec.baselines import RECOMMENDERS

    where = where or f"models.{spec.name}"
    try:
        cls = RECOMMENDERS[spec.resolved_kind]
    except ValueError as exc:
        raise ValueError(f"{where}.kind: {exc}") from None
    data = merge(config.llm, spec.settings) if cls.uses_llm else spec.settings
    data = merge(data, changes or {})
    try:
        return cls.Settings.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: "
            f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in err.errors()
        )
        raise ValueError(f"{where}.settings: {problems}") from None


@dataclass(frozen=True)
class Job:
    """One model variant on one few-shot draw."""

    model: str
    kind: str
    variant: str
    ablation: str
    settings: StrictModel
    shots: int
    seed: int
    candidates: tuple[tuple[str, StrictModel], ...] = ()  # a search: (point as JSON, settings) to select from

    @property
    def settings_key(self) -> str:
        """Identifies the trained model: kind and settings (two variants with equal keys share results)."""
        identity: dict[str, Any] = {"kind": self.kind, "settings": self.settings.model_dump(mode="json")}
        if self.candidates:
            identity["search"] = [point for point, _ in self.candidates]
        text = json.dumps(identity, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def plan_jobs(config: EvalConfig) -> list[Job]:
    """Every job, ordered by (shots, seed) so the work they share sits together."""
    jobs: list[Job] = []
    for spec in config.models:
        settings = model_settings(config, spec)
        candidates = tuple((json.dumps(point, sort_keys=True), model_settings(config, spec, point))
                           for point in spec.search_points()) if spec.search else ()
        for shots in spec.shots or config.shots:
            for seed in spec.seeds or config.seeds:
                jobs.append(Job(spec.name, spec.resolved_kind, DEFAULT_VARIANT, "", settings, shots, seed, candidates))
    for ablation in config.ablations:
        spec = next(m for m in config.models if m.name == ablation.model)
        for value in ablation.values:
            settings = model_settings(config, spec, ablation.variant_settings(value))
            for shots in ablation.shots or spec.shots or config.shots:
                for seed in ablation.seeds or spec.seeds or config.seeds:
                    jobs.append(Job(spec.name, spec.resolved_kind, str(value), ablation.name, settings, shots, seed))
    ranked = sorted(enumerate(jobs), key=lambda pair: (pair[1].shots, pair[1].seed, pair[0]))
    return [job for _, job in ranked]


def quick_config(config: EvalConfig) -> EvalConfig:
    """The evaluation shrunk as ``config.quick`` says: fewer shots, seeds and rows, LLM stages capped."""
    from atflrec.baselines import RECOMMENDERS

    quick = config.quick
    models = []
    for spec in config.models:
        settings = dict(spec.settings)
        if RECOMMENDERS[spec.resolved_kind].uses_llm:
            settings = merge(settings, {"optim.max_steps": quick.llm_max_steps})
        models.append(spec.model_copy(update={"settings": settings, "shots": None, "seeds": None}))
    data = config.model_dump()
    data.update(
        shots=quick.shots, seeds=quick.seeds, models=[m.model_dump() for m in models],
        max_eval_samples=min(quick.max_eval_samples, config.max_eval_samples or quick.max_eval_samples),
        ablations=([a.model_dump() | {"shots": None, "seeds": None} for a in config.ablations]
                   if quick.ablations else []),
    )
    return EvalConfig.model_validate(data)
