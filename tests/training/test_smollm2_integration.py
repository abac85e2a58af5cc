"""64-shot ATFLRec on the built-in benchmark with the real SmolLM2 (slow; `pytest -m integration`).

The held-out set is the warm test split and the cold-start split together (up to 150 rows each):
one AUC over ~300 rows is steadier than either alone. The baseline is the same model before
training (fresh adapters and encoder), scored on the same rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from atflrec.data.format import load_dataset
from atflrec.metrics import auc
from atflrec.model.network import ModelConfig
from atflrec.samples import SampleConfig, make_samples
from atflrec.training.local import LocalTrainConfig, OptimConfig, predict, prepare_run, train_run

# Skipped while issue #4 is open. Measured runs of exactly this test (seed 0, early fusion, 4 epochs,
# lr 2e-3 / encoder 3e-3): held-out AUC 0.462 -> 0.508 (+0.046), short of the margin; an 8-epoch run
# moved test AUC 0.477 -> 0.490 and cold-start AUC 0.388 -> 0.563. A later learning curve of the same
# setting (seed 0, one AdamW across epochs, one torch thread) gave 0.462 untrained, 0.488 / 0.544 / 0.543
# after 2 / 4 / 6 epochs: the gain plateaus near +0.08 by epoch 4, but on one seed and with run-to-run
# spread (+0.046 vs +0.082 at 4 epochs). Seed 1, same curve setting: 0.464 -> 0.484 after 4 epochs (+0.019).
# More epochs alone do not give a margin that holds across seeds.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skip(reason="issue #4 open: 64-shot SmolLM2 gain varies +0.02..+0.08 AUC by seed, not a margin that holds"),
]
AUC_MARGIN = 0.05


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory, ray_cluster):
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store

    root = tmp_path_factory.mktemp("benchmark")
    generate(SynthConfig(seed=0, users=100, items=160), root / "data")
    build_feature_store(root / "data", str(root / "features"), FeatureConfig(n_mels=[80]))
    make_samples(load_dataset(root / "data"), root / "samples", SampleConfig())
    return root


def held_out_auc(run) -> float:
    rows = run.eval_rows["test"] + run.eval_rows["cold"]
    scores = predict(run.model, rows, run.collator, run.config.eval_batch_size)
    return auc([r["label"] for r in rows], scores)


@pytest.mark.parametrize("seed", [0])
def test_64_shot_auc_clearly_above_the_untrained_model(benchmark, seed) -> None:
    config = LocalTrainConfig(
        model=ModelConfig(encoder={"n_mels": 80}, fusion={"strategy": "early"}),
        samples=str(benchmark / "samples"), features=str(benchmark / "features"), shots=64, seed=seed,
        optim=OptimConfig(lr=2e-3, encoder_lr=3e-3, batch_size=8, epochs=4),
        eval_splits=["test", "cold"], max_eval_samples=150, eval_batch_size=16,
    )
    run = prepare_run(config)
    before = held_out_auc(run)
    result = train_run(run)
    after = held_out_auc(run)
    assert np.mean(result.losses["shared"][-4:]) < np.mean(result.losses["shared"][:4])
    assert after > before + AUC_MARGIN, (after, before)
