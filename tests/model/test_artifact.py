import json

import pytest
import torch
from safetensors.torch import load_file

from atflrec.model.artifact import ENCODER_FILE, META_FILE, ArtifactError, load_artifact, save_artifact
from atflrec.model.scoring import probability
from atflrec.training.local import OptimConfig, build_model, make_collator, train_stage


@pytest.mark.parametrize("strategy", ["early", "late_weighted", "late_head"])
def test_round_trip_reproduces_scores_exactly(tmp_path, model_config, rows, features, strategy) -> None:
    model = build_model(model_config(strategy, pooling="attention"), seed=0)
    collator = make_collator(model, features)
    # A few steps per stage so every saved part differs from its fresh initialisation.
    for stage in model.fusion.stages():
        train_stage(model, stage, rows, collator, OptimConfig(lr=1e-2, epochs=1, batch_size=2, max_steps=1))
    model.configure_stage(None)
    model.eval()
    with torch.no_grad():
        before = probability(model(collator(rows)))

    save_artifact(model, tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact")
    with torch.no_grad():
        after = probability(loaded(make_collator(loaded, features)(rows)))
    assert torch.equal(before, after)

    meta = json.loads((tmp_path / "artifact" / META_FILE).read_text())
    assert meta["model"]["fusion"]["strategy"] == strategy and meta["adapters"] == list(model.adapters)
    for name in model.adapters:
        weights = load_file(str(tmp_path / "artifact" / "adapters" / name / "adapter_model.safetensors"))
        assert weights and all("lora_" in key for key in weights)  # adapters only, never the base model
    assert set(load_file(str(tmp_path / "artifact" / ENCODER_FILE))) == set(model.encoder.state_dict())


def test_loading_something_else_is_an_artifact_error(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not an ATFLRec artifact"):
        load_artifact(tmp_path)
