"""Ray Train + DeepSpeed on 2 CPU workers with a tiny model: ZeRO-2/3, checkpoints, failures, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from atflrec.cluster.local import train_worker_pids
from atflrec.config import merge
from atflrec.model.artifact import load_artifact
from atflrec.samples import read_samples
from atflrec.testing import registered_checkpoint
from atflrec.training.distributed import TrainingError, train
from atflrec.training.distributed_config import TrainConfig
from atflrec.training.local import LocalTrainConfig, make_collator, predict, prepare_run, train_run
from atflrec.training.loop import lr_factor
from atflrec.training.worker import VAL_SCORES_FILE, read_worker_groups

N_MELS = 8
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory, ray_cluster) -> Path:
    """A very small built-in benchmark: data, an 8-bin feature store and samples."""
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.samples import SampleConfig, make_samples

    root = tmp_path_factory.mktemp("train-benchmark")
    generate(SynthConfig(users=12, items=24, clip_seconds=0.5, interactions_per_user=(8, 12)), root / "data")
    build_feature_store(root / "data", str(root / "features"), FeatureConfig(n_mels=[N_MELS], clip_seconds=0.5))
    make_samples(load_dataset(root / "data"), root / "samples", SampleConfig(cold_item_fraction=0.2))
    return root


def _config(benchmark: Path, tiny_base_dir: Path, tmp_path: Path, **overrides) -> TrainConfig:
    data = {
        "model": {"base_model": str(tiny_base_dir), "encoder": {"n_mels": N_MELS, "width": 16},
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}},
        "samples": str(benchmark / "samples"), "features": str(benchmark / "features"), "shots": 16, "seed": 0,
        "optim": {"lr": 1e-2, "encoder_lr": 1e-2, "batch_size": 4, "epochs": 2},
        "eval_splits": ["val", "test", "cold"],
        "deepspeed": {"config": "deepspeed/zero2_cpu"},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"name": "run", "storage_path": str(tmp_path / "storage"), "keep_best": 2},
        "out": str(tmp_path / "best"),
    }
    return TrainConfig.model_validate(merge(data, overrides))


def _steps(config: TrainConfig, stages: int) -> int:
    per_worker = config.shots // config.scaling.num_workers
    return stages * config.optim.epochs * -(-per_worker // config.optim.batch_size)


@pytest.mark.parametrize("zero", ["zero2_cpu", "zero3_cpu"])
def test_a_run_finishes_and_its_best_checkpoint_reproduces_the_trainer_scores(benchmark, tiny_base_dir, tmp_path, zero):
    config = _config(benchmark, tiny_base_dir, tmp_path,
                     **{"deepspeed.config": f"deepspeed/{zero}"})
    outcome = train(config)

    assert [h["global_step"] for h in outcome.history] == [_steps(config, 1) // 2, _steps(config, 1)]
    assert set(outcome.metrics) == {"test", "cold"}
    assert all(np.isfinite(outcome.metrics["test"]["log_loss"]) for _ in [0])
    best = Path(outcome.exported)
    # Only trained tensors, non-empty (ZeRO-3 partitions them; the checkpoint must hold them whole).
    encoder = load_file(best / "encoder.safetensors")
    assert encoder and all(t.numel() > 0 for t in encoder.values())
    adapter = load_file(best / "adapters/shared/adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 and "lora_" in k for k, t in adapter.items())
    # The checkpoint in the scoring path gives the scores the trainer computed for it.
    model = load_artifact(best)
    val = read_samples(config.samples, "val").to_pylist()
    scores = predict(model, val, make_collator(model, _features(config, val)), batch_size=8)
    trainer_scores = json.loads((best / VAL_SCORES_FILE).read_text())
    assert np.allclose(scores, [trainer_scores[r["sample_id"]] for r in val], atol=1e-5)


def test_zero3_with_a_partitioned_base_takes_the_steps_zero2_takes(benchmark, tiny_base_dir, tmp_path):
    """ZeRO-3 builds the base model straight into partitions (each worker a half); the training is
    the same: 2 workers, same seed, the same losses, validation AUCs and final metrics as ZeRO-2."""
    runs = {zero: train(_config(benchmark, tiny_base_dir, tmp_path, out=None, **{
        "deepspeed.config": f"deepspeed/{zero}", "run.name": zero, "optim.epochs": 1}))
        for zero in ("zero2_cpu", "zero3_cpu")}
    two, three = runs["zero2_cpu"], runs["zero3_cpu"]
    assert len(two.losses["shared"]) == _steps(_config(benchmark, tiny_base_dir, tmp_path, **{"optim.epochs": 1}), 1)
    assert np.allclose(three.losses["shared"], two.losses["shared"], rtol=1e-4, atol=1e-5)
    assert [h["val_auc"] for h in three.history] == pytest.approx([h["val_auc"] for h in two.history], abs=1e-6)
    assert three.metrics["test"]["log_loss"] == pytest.approx(two.metrics["test"]["log_loss"], rel=1e-4)


def _features(config: TrainConfig, rows) -> dict:
    import pyarrow as pa

    from atflrec.samples import SAMPLE_SCHEMA
    from atflrec.training.local import load_item_features

    return load_item_features(config.features, N_MELS, [pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)])


def test_separate_adapters_train_every_stage_with_a_checkpoint_each(benchmark, tiny_base_dir, tmp_path):
    config = _config(benchmark, tiny_base_dir, tmp_path,
                     **{"model.fusion.strategy": "late_weighted", "optim.epochs": 1})
    outcome = train(config)
    assert [h["stage"] for h in outcome.history] == ["text", "audio", "fusion"]
    assert [h.get("model_evals") for h in outcome.history] == [None, None, 1]  # Tune's rungs: whole model only
    assert list(outcome.losses) == ["text", "audio", "fusion"]
    assert outcome.history[-1]["global_step"] == _steps(config, 3)
    weights = load_file(Path(outcome.exported) / "fusion.safetensors")["weights"]
    assert not np.allclose(weights.numpy(), 0.5)  # the fusion stage trained the weights


def test_the_local_loop_and_a_one_worker_ray_run_take_the_same_steps(benchmark, tiny_base_dir, tmp_path):
    """Same seed, same loop: the same per-step losses, with accumulation over an epoch's ragged tail,
    a warm-up and decay of the learning rate, and max_steps cutting the stage mid-epoch."""
    optim = {"lr": 1e-2, "encoder_lr": 1e-2, "batch_size": 3, "grad_accum": 4, "epochs": 3, "max_steps": 5,
             "schedule": "linear", "warmup_ratio": 0.3}
    config = _config(benchmark, tiny_base_dir, tmp_path, optim=optim, **{"scaling.num_workers": 1})
    outcome = train(config)
    local = LocalTrainConfig.model_validate({
        **config.model_dump(include={"model", "samples", "features", "shots", "seed", "optim", "precision"}),
        "eval_splits": ["val"]})
    expected = train_run(prepare_run(local)).losses["shared"]

    # 16 rows in micro-batches of 3: 6 per epoch, i.e. steps of 4 and 2; max_steps stops epoch 3 after 1.
    assert len(expected) == 5
    assert np.allclose(outcome.losses["shared"], expected, rtol=1e-4, atol=1e-5), (outcome.losses, expected)
    assert [h["global_step"] for h in outcome.history] == [2, 4, 5]
    assert outcome.history[-1]["epoch"] == 3 and outcome.history[-1]["stage_done"]
    assert outcome.history[-1]["lr_factor"] == pytest.approx(lr_factor(4, 5, 2, "linear"))


def test_a_fusion_stage_fit_on_validation_rows_trains_on_them_in_both_loops(benchmark, tiny_base_dir, tmp_path):
    """``fusion.fit_on: validation``: the fusion stage steps over the held-out validation rows (the
    adapters' stages over the training rows), with the same losses in a 1-worker Ray run and locally."""
    config = _config(benchmark, tiny_base_dir, tmp_path, **{
        "model.fusion.strategy": "late_weighted", "model.fusion.history_share": True,
        "model.fusion.fit_on": "validation", "optim.epochs": 1, "scaling.num_workers": 1})
    outcome = train(config)
    val = read_samples(config.samples, "val").num_rows
    assert val != config.shots
    steps = [len(outcome.losses[stage]) for stage in ("text", "audio", "fusion")]
    assert steps == [-(-config.shots // 4), -(-config.shots // 4), -(-val // 4)]
    local = LocalTrainConfig.model_validate({
        **config.model_dump(include={"model", "samples", "features", "shots", "seed", "optim", "precision"}),
        "eval_splits": ["val"]})
    expected = train_run(prepare_run(local)).losses
    for stage in ("text", "audio", "fusion"):
        assert np.allclose(outcome.losses[stage], expected[stage], rtol=1e-4, atol=1e-5), stage


def test_a_killed_worker_is_replaced_and_the_run_completes(benchmark, tiny_base_dir, tmp_path):
    config = _config(benchmark, tiny_base_dir, tmp_path, **{"optim.epochs": 4})
    storage = Path(config.run.storage_path) / config.run.name
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not registered_checkpoint(storage):
            time.sleep(0.5)
        workers = train_worker_pids()
        if workers:
            os.kill(workers[-1], signal.SIGKILL)
            killed.append(workers[-1])

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint)
    killer.start()
    outcome = train(config)
    killer.join()
    assert killed, "no worker was found to kill"
    assert outcome.history[-1]["global_step"] == _steps(config, 1)
    assert outcome.history[-1]["epoch"] == 4
    # The replacement group continued from the checkpoint, moments included; not from step 0.
    resumed = outcome.resumed_from
    per_epoch = _steps(config, 1) // config.optim.epochs
    assert resumed is not None and 1 <= resumed["epoch"] < 4, resumed
    assert resumed["step"] == resumed["global_step"] == resumed["epoch"] * per_epoch
    assert resumed["optimizer_restored"] and resumed["optimizer_steps"] == resumed["step"]
    assert len(outcome.losses["shared"]) == _steps(config, 1)  # the steps before the kill came with the checkpoint
    groups = read_worker_groups(str(storage))
    assert outcome.worker_groups == len(groups) == 2
    assert groups[0]["checkpoint"] is None and groups[1]["checkpoint"].startswith(str(storage / "checkpoint-"))


def test_resume_continues_an_interrupted_run(benchmark, tiny_base_dir, tmp_path):
    config = _config(benchmark, tiny_base_dir, tmp_path, **{"optim.epochs": 3})
    config_file = tmp_path / "train.json"
    config_file.write_text(config.model_dump_json())
    command = [str(Path(sys.executable).parent / "atflrec"), "train", "--config", str(config_file),
               "scaling.num_workers=1", "address=local"]  # its own Ray, whatever else runs on the machine
    storage = Path(config.run.storage_path) / config.run.name
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not registered_checkpoint(storage) and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert registered_checkpoint(storage), "the run registered no checkpoint before it was stopped"

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # an existing run is never silently reused
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    found = re.search(r"resumed at stage 0, epoch ([12]), step (\d+) \(optimizer state restored\)", resumed.stdout)
    assert found, resumed.stdout[-2000:]
    one_worker = config.model_copy(update={"scaling": config.scaling.model_copy(update={"num_workers": 1})})
    per_epoch = _steps(one_worker, 1) // config.optim.epochs
    assert int(found[2]) == int(found[1]) * per_epoch > 0  # the checkpoint's step, not 0
    assert "worker groups started: 2" in resumed.stdout, resumed.stdout[-2000:]  # the killed one, then this one
    last = json.loads((storage / "checkpoint-0-shared-epoch003" / "progress.json").read_text())
    assert last["global_step"] == _steps(one_worker, 1)
    # Exact: the interrupted-and-resumed run took the steps an uninterrupted run takes.
    straight = train(one_worker.model_copy(update={"run": one_worker.run.model_copy(update={"name": "straight"}),
                                                   "out": None}))
    assert np.allclose(last["losses"]["shared"], straight.losses["shared"], rtol=1e-5, atol=1e-6)
    assert straight.worker_groups == 1


def test_a_deepspeed_value_that_contradicts_the_training_config_is_refused(benchmark, tiny_base_dir, tmp_path):
    config = _config(benchmark, tiny_base_dir, tmp_path, **{"deepspeed.overrides": {"gradient_accumulation_steps": 4}})
    with pytest.raises(Exception, match="gradient_accumulation_steps=4 disagrees with optim.grad_accum=1"):
        train(config)


def test_resume_without_a_run_is_an_error(benchmark, tiny_base_dir, tmp_path):
    with pytest.raises(TrainingError, match="no run 'run'"):
        train(_config(benchmark, tiny_base_dir, tmp_path), resume=True)
