import json

import numpy as np
import pyarrow as pa
import pytest

from atflrec.model.artifact import load_artifact
from atflrec.model.network import ModelConfig
from atflrec.samples import SAMPLE_SCHEMA, write_samples
from atflrec.training.local import (
    LocalTrainConfig,
    OptimConfig,
    build_model,
    evaluate,
    fit_audio_normalisation,
    make_collator,
    predict,
    train_local,
    train_stage,
)


def _config(base, strategy: str) -> ModelConfig:
    return ModelConfig(
        base_model=str(base), encoder={"n_mels": 8, "width": 16, "pooling": "mean"},
        lora={"r": 4, "alpha": 8, "dropout": 0.0}, fusion={"strategy": strategy, "head_hidden": 8},
    )


def test_training_on_planted_audio_lowers_the_loss(tiny_base_dir, planted) -> None:
    rows, features = planted
    model = build_model(_config(tiny_base_dir, "early"), seed=0)
    fit_audio_normalisation(model, sorted(features), features)
    collator = make_collator(model, features)
    before = evaluate(model, rows, collator, batch_size=16)
    optim = OptimConfig(lr=2e-2, encoder_lr=2e-2, batch_size=8, grad_accum=2, epochs=8)
    losses, speed = train_stage(model, model.fusion.stages()[0], rows, collator, optim)
    assert len(losses) == 8 * 2  # 4 micro-batches per epoch, 2 per step
    # The tiny model's tied 32-wide embeddings keep its Yes-No margins small, hence modest drops.
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05 and speed > 0
    model.configure_stage(None)
    assert evaluate(model, rows, collator, batch_size=16)["log_loss"] < before["log_loss"] - 0.05


def test_bf16_autocast_runs_and_scores_close_to_fp32(tiny_base_dir, planted) -> None:
    rows, features = planted
    model = build_model(_config(tiny_base_dir, "late_weighted"), seed=0)
    collator = make_collator(model, features)
    fp32 = predict(model, rows[:8], collator, 8)
    bf16 = predict(model, rows[:8], collator, 8, precision="bf16")
    assert np.allclose(fp32, bf16, atol=0.05)
    losses, _ = train_stage(model, model.fusion.stages()[1], rows, collator,
                            OptimConfig(batch_size=8, max_steps=2), precision="bf16")
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_train_local_runs_every_stage_and_writes_a_loadable_artifact(tmp_path, tiny_base_dir, planted) -> None:
    rows, _ = planted  # text-only: the title carries the signal
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    write_samples(tmp_path / "samples", {"train": table, "test": table.slice(0, 16)}, {})
    config = LocalTrainConfig(
        model=_config(tiny_base_dir, "late_head"), samples=str(tmp_path / "samples"), shots=16, seed=1,
        optim=OptimConfig(lr=5e-3, fusion_lr=5e-3, batch_size=8, epochs=1), eval_splits=["test"],
        out=str(tmp_path / "artifact"),
    )
    result = train_local(config)
    assert list(result.losses) == ["text", "audio", "fusion"]
    assert all(len(v) == 2 for v in result.losses.values())
    assert set(result.metrics["test"]) == {"auc", "gauc", "log_loss"}
    loaded = load_artifact(tmp_path / "artifact")
    again = evaluate(loaded, rows[:16], make_collator(loaded, {}), batch_size=16)
    assert again == pytest.approx(result.metrics["test"], abs=1e-6)
    meta = json.loads((tmp_path / "artifact" / "atflrec_model.json").read_text())
    assert meta["train"]["shots"] == 16 and "test" in meta["metrics"]
