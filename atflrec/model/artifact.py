"""Model artifacts: only what was trained, as safetensors, plus a JSON description. No pickle.

Layout of an artifact directory::

    atflrec_model.json        format version, full ModelConfig (incl. the base-model reference),
                              adapter names, answer/placeholder token ids, library versions, extras
    adapters/<name>/          peft ``save_pretrained`` output per adapter
                              (adapter_config.json + adapter_model.safetensors)
    encoder.safetensors       audio encoder state
    fusion.safetensors        fusion strategy state (empty for ``early``)

Loading rebuilds the model from the base-model reference and the config, then loads the saved
tensors into it, so scores equal the saved model's exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from atflrec.errors import UserError
from atflrec.model.network import ATFLRecModel, ModelConfig
from atflrec.prompts import AUDIO_TOKEN

FORMAT_VERSION = 1
META_FILE = "atflrec_model.json"
ADAPTERS_DIR = "adapters"
ENCODER_FILE = "encoder.safetensors"
FUSION_FILE = "fusion.safetensors"


class ArtifactError(UserError, ValueError):
    """An artifact that is missing, incomplete, or does not match its base model."""


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_artifact(model: ATFLRecModel, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s trained parts and description to ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # peft writes every adapter whose name is not "default" to its own sub-directory.
    model.llm.save_pretrained(str(out_dir / ADAPTERS_DIR), selected_adapters=list(model.adapters))
    save_file(_tensors(model.encoder), str(out_dir / ENCODER_FILE))
    save_file(_tensors(model.fusion), str(out_dir / FUSION_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model.config.model_dump(mode="json"),
        "adapters": list(model.adapters),
        "answer_token_ids": list(model.answer_ids),
        "audio_token": AUDIO_TOKEN,
        "audio_token_id": model.audio_token_id,
        "versions": _versions(),
        **(extra or {}),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{path} is not an ATFLRec artifact (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta


def load_weights(model: ATFLRecModel, path: str | Path) -> ATFLRecModel:
    """Load an artifact's trained tensors (adapters, encoder, fusion) into ``model``, built from the
    same config; the base model's weights are untouched."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    path = Path(path)
    meta = read_meta(path)
    if list(model.answer_ids) != meta["answer_token_ids"] or model.audio_token_id != meta["audio_token_id"]:
        raise ArtifactError(f"{path}: the base model's tokenizer gives other answer/placeholder ids than when saved")
    for name in model.adapters:
        weights = load_peft_weights(str(path / ADAPTERS_DIR / name), device="cpu")
        result = set_peft_model_state_dict(model.llm, weights, adapter_name=name)
        if result.unexpected_keys:
            raise ArtifactError(f"{path}: adapter {name!r} has unexpected tensors {result.unexpected_keys[:3]}")
    model.encoder.load_state_dict(load_file(str(path / ENCODER_FILE)))
    model.fusion.load_state_dict(load_file(str(path / FUSION_FILE)))
    return model


def load_artifact(path: str | Path, base_model: str | None = None, dtype: torch.dtype = torch.float32) -> ATFLRecModel:
    """Rebuild a saved model in eval mode. ``base_model`` overrides the saved reference (same weights
    elsewhere, e.g. another cache directory)."""
    from atflrec.base_model.fetch import load_base_model

    config = ModelConfig.model_validate(read_meta(path)["model"])
    base, tokenizer = load_base_model(base_model or config.base_model, dtype=dtype)
    return load_weights(ATFLRecModel(config, base, tokenizer), path).eval()
