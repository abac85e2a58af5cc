"""Training benchmark: Ray Train + DeepSpeed against the plain single-process loop, same model and batch.

    python bench/train.py --out bench/results/train.json

Builds demo-sized benchmark data (synth, 80-bin features, samples) in a temporary directory, or uses
``--work DIR``, then trains the real SmolLM2 with early fusion (one stage) on ``--shots`` samples
with the demo's batch size and prompts, for ``--epochs`` epochs, three ways:

* ``plain_1t``: :func:`atflrec.training.local.train_stage` in this process with one torch thread;
* ``ray_ds_1w``: ``atflrec train`` with 1 worker x 1 thread, DeepSpeed ZeRO-2 over gloo;
* ``ray_ds_2w``: the same with 2 workers x 1 thread each (each sees half the samples per epoch).

Throughput is training samples per second in the last epoch (warm: no model loading, worker start,
DeepSpeed op compilation or validation inside it). Writes ``ray_ds_1w_vs_plain`` and
``ray_ds_2w_vs_plain`` (ratios to ``plain_1t``), the absolute figures, and the machine and versions.
Goal: ``ray_ds_1w_vs_plain`` >= 0.85 (the distributed path costs little on one worker).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch

from atflrec.cluster.local import own_dashboard
from atflrec.model.network import ModelConfig
from atflrec.training.distributed import train
from atflrec.training.distributed_config import TrainConfig
from atflrec.training.local import LocalTrainConfig, OptimConfig, prepare_run, train_stage

GOALS = {"ray_ds_1w_vs_plain": 0.85}
PACKAGES = ("atflrec", "ray", "torch", "deepspeed", "transformers", "peft")


def prepare_data(work: Path) -> Path:
    """Demo-sized data, features and samples under ``work`` (reused when already there)."""
    import ray

    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.samples import SampleConfig, make_samples

    if not (work / "samples" / "samples.json").is_file():
        generate(SynthConfig(users=100, items=160), work / "data")
        ray.init(num_cpus=2, include_dashboard=False)
        build_feature_store(work / "data", str(work / "features"), FeatureConfig(n_mels=[80]))
        ray.shutdown()
        make_samples(load_dataset(work / "data"), work / "samples", SampleConfig())
    return work


def model_config() -> ModelConfig:
    return ModelConfig(encoder={"n_mels": 80}, fusion={"strategy": "early"})


def plain(work: Path, shots: int, batch_size: int, epochs: int) -> float:
    torch.set_num_threads(1)
    config = LocalTrainConfig(model=model_config(), samples=str(work / "samples"), features=str(work / "features"),
                              shots=shots, optim=OptimConfig(batch_size=batch_size, epochs=1), eval_splits=[])
    run = prepare_run(config)
    stage = run.model.fusion.stages()[0]
    speed = 0.0
    for epoch in range(epochs):  # one call per epoch: keep the last (warm) one
        _, speed = train_stage(run.model, stage, run.train_rows, run.collator, config.optim, seed=epoch)
    return speed


def distributed(work: Path, shots: int, batch_size: int, epochs: int, workers: int) -> float:
    config = TrainConfig(
        model=model_config(), samples=str(work / "samples"), features=str(work / "features"), shots=shots,
        optim=OptimConfig(batch_size=batch_size, epochs=epochs), eval_splits=["val"], max_eval_samples=8,
        scaling={"num_workers": workers, "cpus_per_worker": 1, "threads_per_worker": 1},
        deepspeed={"config": "deepspeed/zero2_cpu"},
        run={"name": f"bench-{workers}w-{int(time.time())}", "storage_path": str(work / "runs"), "keep_best": 1},
    )
    outcome = train(config)
    return float(outcome.history[-1]["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, help="data directory to create or reuse (default: a temporary one)")
    parser.add_argument("--shots", type=int, default=32, help="training samples per epoch")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per micro-batch (the demo's)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs; the last one is timed")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = prepare_data(args.work or Path(tmp))
        figures = {"plain_1t": plain(work, args.shots, args.batch_size, args.epochs)}
        ray.init(num_cpus=2, **own_dashboard())
        figures["ray_ds_1w"] = distributed(work, args.shots, args.batch_size, args.epochs, workers=1)
        figures["ray_ds_2w"] = distributed(work, args.shots, args.batch_size, args.epochs, workers=2)
        ray.shutdown()
    ratios = {"ray_ds_1w_vs_plain": figures["ray_ds_1w"] / figures["plain_1t"],
              "ray_ds_2w_vs_plain": figures["ray_ds_2w"] / figures["plain_1t"]}
    result = {
        **ratios,
        "samples_per_s": figures,
        "goals": GOALS,
        "goals_met": {k: ratios[k] >= v for k, v in GOALS.items()},
        "setup": {"base_model": "smollm2-135m-instruct", "fusion": "early", "shots": args.shots,
                  "batch_size": args.batch_size, "epochs": args.epochs, "deepspeed": "zero2_cpu",
                  "threads_per_worker": 1},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cores": __import__("os").cpu_count()},
        "versions": {name: version(name) for name in PACKAGES} | {"python": platform.python_version()},
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios | {"samples_per_s": figures}, indent=2))


if __name__ == "__main__":
    main()
