"""A loaded artifact ready to serve: the model in eval mode, its audio-token cache, its description."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atflrec.model.adapters import ADAPTER_SEES_AUDIO
from atflrec.model.audio_encoder import AudioEncoder
from atflrec.model.batch import stack_audio
from atflrec.model.network import ATFLRecModel, ModelConfig
from atflrec.model.prefix import Query
from atflrec.serving.catalogue import Catalogue
from atflrec.tracking import public_reference

ENCODE_CHUNK = 256  # items per encoder call when filling the cache


def audio_mels(meta: Mapping[str, Any]) -> int | None:
    """The Mel-bin count an artifact's prompts need audio features for (None: text only)."""
    if not any(ADAPTER_SEES_AUDIO[a] for a in meta["adapters"]):
        return None
    return ModelConfig.model_validate(meta["model"]).encoder.n_mels


class AudioTokens:
    """Each item's audio soft tokens ``[k, hidden]``, encoded on first use and kept: the encoder is
    frozen when serving, so an item's tokens never change."""

    def __init__(self, encoder: AudioEncoder, features: Mapping[str, np.ndarray]) -> None:
        self.encoder = encoder
        self.features = features
        self.cache: dict[str, torch.Tensor] = {}

    def tokens(self, items: Sequence[str]) -> torch.Tensor:
        missing = [i for i in dict.fromkeys(items) if i not in self.cache]
        device = self.encoder.feature_mean.device
        for start in range(0, len(missing), ENCODE_CHUNK):
            chunk = missing[start:start + ENCODE_CHUNK]
            audio, mask = stack_audio([self.features[i] for i in chunk], self.encoder.config.n_mels)
            with torch.inference_mode():
                encoded = self.encoder(audio.to(device), mask.to(device))
            self.cache.update(zip(chunk, encoded))
        return torch.cat([self.cache[i] for i in items])


@dataclass
class ServedModel:
    model_id: str
    path: str
    meta: dict[str, Any]
    model: ATFLRecModel
    audio_items: Mapping[str, np.ndarray] = field(default_factory=dict)  # items with audio (placeholders)
    audio: AudioTokens | None = None

    @classmethod
    def load(cls, model_id: str, path: str, catalogue: Catalogue, base_model: str | None = None,
             device: str = "auto") -> ServedModel:
        from atflrec.model.artifact import load_artifact, read_meta
        from atflrec.training.local import resolve_device

        meta = read_meta(path)
        model = load_artifact(path, base_model=base_model).to(resolve_device(device))
        n_mels = audio_mels(meta)
        if n_mels is None:
            return cls(model_id, path, meta, model)
        features = catalogue.features(n_mels)
        return cls(model_id, path, meta, model, features, AudioTokens(model.encoder, features))

    def score(self, queries: Sequence[Query], rows_per_pass: int) -> list[np.ndarray]:
        return self.model.score_queries(queries, self.audio_items, self.audio, rows_per_pass)


def _no_paths(value: Any) -> Any:
    """``value`` with every absolute path replaced by its last component (what a client may see)."""
    import os

    if isinstance(value, str):
        return os.path.basename(value.rstrip("/\\")) if os.path.isabs(value) or value.startswith("~") else value
    if isinstance(value, Mapping):
        return {k: _no_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_paths(v) for v in value]
    return value


def describe(model_id: str, path: str, meta: Mapping[str, Any], public: bool = False) -> dict[str, Any]:
    """What ``GET /v1/model`` says about one model, from its artifact's description; ``public``:
    without absolute paths (the artifact and a local base model by name only)."""
    config = ModelConfig.model_validate(meta["model"])
    info = {
        "model_id": model_id, "artifact": path, "base_model": config.base_model,
        "adapters": list(meta["adapters"]), "fusion": config.fusion.strategy,
        "audio_n_mels": audio_mels(meta), "config": meta["model"], "versions": meta.get("versions", {}),
        "metrics": meta.get("metrics", {}),
        "tracking": public_reference(meta.get("tracking")) if public else meta.get("tracking"),
    }
    return _no_paths(info) if public else info


def top_k(item_ids: Sequence[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` best (item, score) pairs, best first; ties keep catalogue order."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [(item_ids[i], float(scores[i])) for i in order]
