"""Search spaces (shipped as ``tune/NAME``): a base training config, knobs with distributions, and
how to search them.

A knob is a dotted :class:`~atflrec.training.distributed_config.TrainConfig` key with a
distribution (``choice``, ``uniform``, ``quniform``, ``loguniform``, ``randint``; a bare list is a
choice). :func:`load_space` checks every knob against ``TrainConfig``: the key must name a field
and every value the distribution can produce (for ranges: both ends and an interior point) must
validate, so a bad knob fails before any trial starts, with the key in the message.

The paper's "LoRA configuration" is not a knob of its own: it follows from the fusion strategy
(``early``: one shared adapter; ``late_weighted`` / ``late_head``: separate text and audio
adapters, see :mod:`atflrec.model.fusion`), so ``model.fusion.strategy`` covers it and no sampled
trial can pair a strategy with a LoRA configuration it cannot run. Results report it as
``lora_config``.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from atflrec.config import (
    RELATIVE_TO,
    ConfigError,
    ConfigRef,
    StrictModel,
    build_config,
    config_ref,
    load_config,
    merge,
)
from atflrec.model.fusion import STRATEGIES
from atflrec.tracking import TrackingConfig
from atflrec.training.distributed_config import TrainConfig

KINDS = ("choice", "uniform", "quniform", "loguniform", "randint")
# Keys the search sets for every trial itself, or keeps fixed so concurrency follows resources.
OWNED = {"run.name": "the search names each trial's run",
         "run.storage_path": "the search stores every trial under --out",
         "out": "the search exports the best trial to --out/best", "address": "set address at the top of the space",
         "scaling": "per-trial workers are fixed for a search (set them under train.scaling)"}
N_MELS_KEY = ("model", "encoder", "n_mels")


class Distribution(StrictModel):
    """Exactly one of the fields; ranges are ``[low, high]`` (``quniform``: ``[low, high, q]``)."""

    choice: list[Any] | None = Field(None, min_length=1, description="one of these values, uniformly")
    uniform: tuple[float, float] | None = Field(None, description="uniform in [low, high]")
    quniform: tuple[float, float, float] | None = Field(
        None, description="uniform in [low, high], rounded to multiples of q")
    loguniform: tuple[float, float] | None = Field(None, description="log-uniform in [low, high] (low > 0)")
    randint: tuple[int, int] | None = Field(None, description="an integer in [low, high], both included")

    @model_validator(mode="before")
    @classmethod
    def _bare_list_is_a_choice(cls, data: Any) -> Any:
        return {"choice": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        if self.kind != "choice":
            low, high = self.args[:2]
            if not low < high:
                raise ValueError(f"{self.kind}: low {low} must be below high {high}")
            if self.kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: low {low} must be positive")
            if self.kind == "quniform" and self.args[2] <= 0:
                raise ValueError(f"quniform: q {self.args[2]} must be positive")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def candidates(self) -> list[Any]:
        """Values to validate: every choice; a range's ends and a non-round interior point."""
        if self.kind == "choice":
            return list(self.args)
        low, high = self.args[:2]
        if self.kind == "randint":
            return [low, high]
        if self.kind == "loguniform":
            return [low, high, math.exp(math.log(low) + 0.37 * (math.log(high) - math.log(low)))]
        return [low, high, low + 0.37 * (high - low)]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(self.args)
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)  # Tune's upper bound is exclusive
        return getattr(tune, self.kind)(*self.args)


class AshaSettings(StrictModel):
    grace_period: int = Field(1, ge=1, description="whole-model validations every trial makes before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1, description="each rung keeps 1/reduction_factor of the trials")
    max_t: int | None = Field(
        None, ge=1,
        description="whole-model validations of the longest trial; unset: ceil(optim.epochs / optim.eval_every), "
                    "the most in the space")
    brackets: int = Field(1, ge=1, description="ASHA brackets (1: plain successive halving)")


class TuneSpace(StrictModel):
    """``atflrec tune``: a search over training configs, each trial one Ray Train run."""

    base: ConfigRef | None = Field(
        None, description="training config (as for `atflrec train`: a shipped one's name or a file); "
                          "unset: TrainConfig defaults")
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig keys (nested) set for every trial, over base")
    space: dict[str, Distribution] = Field(..., min_length=1, description="dotted TrainConfig key -> distribution")
    data: str | None = Field(
        None,
        description="dataset dir: build the feature store (train.features) for every Mel-bin count in the space "
                    "first; unset: the store must hold them")
    feature_clip_seconds: float | None = Field(
        None, gt=0, description="clip length when data builds the store; unset: the store's, else 4.0")
    num_samples: int = Field(8, ge=1, description="trials to run")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha stops weak trials early on validation AUC; fifo runs every trial to the end")
    asha: AshaSettings = Field(
        default_factory=AshaSettings,
        description="ASHA settings (time unit: model_evals, one per validation of the whole model, "
                    "i.e. of the last stage)")
    search: Literal["random", "optuna"] = Field("random", description="random sampling, or Optuna's TPE")
    seed: int = Field(0, description="seed of the search algorithm's sampling")
    max_concurrent_trials: int | None = Field(
        None, ge=1,
        description="trials at once; unset: what the cluster's resources fit (per-trial workers x resources)")
    trial_resources: dict[str, float] = Field(
        default_factory=lambda: {"memory": 2**30},
        description="what each trial's driver process reserves (it reads the samples and watches its Train run; "
                    "no CPU, so the workers get every core); e.g. {TRAIN_DRIVER: 0.01} to keep drivers on nodes "
                    "with that custom resource")
    trial_max_failures: int = Field(
        2, ge=0,
        description="times a trial is retried after its driver fails (e.g. its node was lost); the retry resumes "
                    "the trial's Train run from its latest checkpoint (a lost Train worker alone is recovered "
                    "inside the run, by run.max_failures)")
    address: str | None = Field(
        None, description="Ray cluster address (ray://... or auto); unset: RAY_ADDRESS or a local cluster")
    out: str = Field("runs/tune", description="output dir: the search's state, trial runs, results table, plots, best/")
    export: str | None = Field(
        None, description="also copy best/ here (e.g. where serving loads from); unset: only OUT/best")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="record the search in MLflow (off): a run for the search, each trial's run nested under it")

    @field_validator("train")
    @classmethod
    def _train_config_refs(cls, train: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A DeepSpeed config named under train resolves where the space's base does."""
        deepspeed = train.get("deepspeed")
        if isinstance(deepspeed, dict) and isinstance(deepspeed.get("config"), str):
            ref = config_ref(deepspeed["config"], (info.context or {}).get(RELATIVE_TO))
            return merge(train, {"deepspeed.config": ref})
        return train

    @field_validator("space")
    @classmethod
    def _no_owned_keys(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for key in space:
            for owned, why in OWNED.items():
                if key == owned or key.startswith(owned + "."):
                    raise ValueError(f"{key}: not a search knob ({why})")
        return space


@dataclass(frozen=True)
class SearchPlan:
    """A validated space: the base training config every trial starts from, and facts about it."""

    space: TuneSpace
    base: dict[str, Any]  # TrainConfig data with local paths made absolute
    n_mels: list[int]  # every Mel-bin count a trial can use
    max_reports: int  # reports of the longest trial (validations per stage x stages)
    max_model_evals: int = 1  # whole-model validations (last stage) of the longest trial: ASHA's max_t

    @property
    def knobs(self) -> list[str]:
        return list(self.space.space)

    def trial_config(self, knobs: dict[str, Any], run_name: str = "trial",
                     storage_path: str = "runs/tune/trials") -> TrainConfig:
        return trial_config(self.base, knobs, run_name, storage_path)


def trial_config(base: dict[str, Any], knobs: dict[str, Any], run_name: str, storage_path: str) -> TrainConfig:
    """The training config of a trial with these knob values, stored as run ``run_name``."""
    data = merge(base, knobs)
    data["run"] = {**data.get("run", {}), "name": run_name, "storage_path": storage_path}
    data["out"], data["address"] = None, None
    data.pop("tracking", None)  # the search's own tracking applies: each trial is a run nested under the search's
    return build_config(TrainConfig, data, "trial config")


def evaluations_per_stage(epochs: int, eval_every: int) -> int:
    """Validations of a stage that runs all its epochs: every ``eval_every`` epochs and after the last."""
    return math.ceil(epochs / eval_every)


def expected_reports(config: TrainConfig) -> int:
    """Reports a trial makes when every stage runs all its epochs (no early stop, no max_steps cut):
    one per validation of every stage."""
    per_stage = evaluations_per_stage(config.optim.epochs, config.optim.eval_every)
    return per_stage * len(STRATEGIES[config.model.fusion.strategy].stages())


def lora_config(strategy: str) -> str:
    """The paper's LoRA configuration a fusion strategy trains (shared, separate, or one adapter)."""
    return STRATEGIES[strategy].lora_mode


def _check_key(key: str) -> None:
    """The dotted key names a TrainConfig field (a section or a value)."""
    model: type[BaseModel] | None = TrainConfig
    walked: list[str] = []
    for part in key.split("."):
        if model is None:
            raise ConfigError(f"space: {key}: {'.'.join(walked)} is a value, not a section")
        if part not in model.model_fields:
            where = ".".join(walked) or "the training config"
            raise ConfigError(f"space: {key}: unknown key ({where} has {', '.join(model.model_fields)})")
        walked.append(part)
        annotation = model.model_fields[part].annotation
        is_section = (get_origin(annotation) is None and isinstance(annotation, type)
                      and issubclass(annotation, BaseModel))
        model = annotation if is_section else None


def _absolute_paths(data: dict[str, Any]) -> dict[str, Any]:
    """Local paths relative to this directory made absolute: trials run elsewhere (Tune's trial dirs)."""
    from atflrec.storage import absolute_uri

    data = copy.deepcopy(data)
    for key in ("samples", "features"):
        if data.get(key):
            data[key] = absolute_uri(str(data[key]))
    model = data.get("model", {})
    if model.get("base_model") and Path(model["base_model"]).exists():  # a local model dir, not a name
        model["base_model"] = str(Path(model["base_model"]).resolve())
    return data


def plan(space: TuneSpace) -> SearchPlan:
    """Validate ``space`` against TrainConfig and resolve its base config."""
    # The base's own references resolve against its file; dumped, they hold shipped names or absolute paths.
    base_file = load_config(TrainConfig, space.base).model_dump(mode="json", exclude_unset=True) if space.base else {}
    base = merge(base_file, space.train)
    base_config = build_config(TrainConfig, base, f"{space.base or 'TrainConfig defaults'} + train")
    base_n_mels = base_config.model.encoder.n_mels
    n_mels = {base_n_mels}
    epochs, strategies = {base_config.optim.epochs}, {base_config.model.fusion.strategy}
    every = {base_config.optim.eval_every}
    for key, distribution in space.space.items():
        _check_key(key)
        for value in distribution.candidates():
            try:
                config = build_config(TrainConfig, merge(base, {key: value}), f"space {key} = {value!r}")
            except ConfigError as exc:
                raise ConfigError(f"space: {key}: value {value!r} does not fit the training config\n{exc}") from None
            if config.model.encoder.n_mels != base_n_mels and distribution.kind != "choice":
                raise ConfigError(f"space: {key}: Mel-bin counts come from the feature store; give them as a choice")
            n_mels.add(config.model.encoder.n_mels)
            epochs.add(config.optim.epochs)
            every.add(config.optim.eval_every)
            strategies.add(config.model.fusion.strategy)
    max_model_evals = max(evaluations_per_stage(e, v) for e, v in itertools.product(epochs, every))
    max_reports = max_model_evals * max(len(STRATEGIES[s].stages()) for s in strategies)
    return SearchPlan(space=space, base=_absolute_paths(base), n_mels=sorted(n_mels), max_reports=max_reports,
                      max_model_evals=max_model_evals)


def load_space(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SearchPlan:
    """Read a space file (plus ``key=value`` overrides of its keys) and validate it."""
    return plan(load_config(TuneSpace, path, overrides))
