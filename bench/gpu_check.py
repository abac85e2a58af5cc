"""The GPU check: bf16 + ZeRO-3 training for a few steps and the serving scorer on the GPU.

    bash bench/gpu_check.sh            # on a machine with a CUDA GPU; writes bench/results/gpu_check.json

Runs the pipeline's own stages on a small built-in dataset: ``atflrec train`` with
``train/gpu_small_zero2`` switched to ZeRO-3 (``deepspeed/zero3_gpu_bf16``),
one worker, a few optimizer steps; then the exported model scored through the serving path
(``ServedModel`` + the prefix-cached scorer) on the GPU and on the CPU, whose fp32 scores must agree
within 0.01. Where no GPU is visible it says so and exits 2 at once, writing nothing (no hang, and
no earlier result replaced).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

WORKDIR = Path("runs/gpu_check")


def no_gpu() -> None:
    print("gpu_check: torch sees no CUDA device, so there is nothing to check here; run it on a GPU machine",
          file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per training stage")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        no_gpu()

    import numpy as np

    from atflrec.config import load_config
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.model.prefix import Query
    from atflrec.samples import SampleConfig, make_samples
    from atflrec.serving.catalogue import Catalogue
    from atflrec.serving.demo import example_history
    from atflrec.serving.scorer import ServedModel
    from atflrec.training.distributed import train
    from atflrec.training.distributed_config import TrainConfig

    record: dict[str, Any] = {"benchmark": "gpu_check",
                              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": platform.platform(), "gpu": torch.cuda.get_device_name(0),
                              "torch": torch.__version__, "bf16_supported": torch.cuda.is_bf16_supported()}
    WORKDIR.mkdir(parents=True, exist_ok=True)
    data, features, samples = WORKDIR / "dataset", WORKDIR / "features", WORKDIR / "samples"
    generate(SynthConfig(users=60, items=96, clip_seconds=2.0), data)
    build_feature_store(data, str(features), FeatureConfig(n_mels=[80], clip_seconds=2.0))
    make_samples(load_dataset(data), samples, SampleConfig())

    run_name = f"gpu-check-{int(time.time())}"  # a new run each time: never resumes or replaces an earlier one
    config = load_config(TrainConfig, "train/gpu_small_zero2", [
        f"samples={samples}", f"features={features}", "deepspeed.config=deepspeed/zero3_gpu_bf16",
        "scaling.num_workers=1", "scaling.cpus_per_worker=2", "shots=32", f"optim.max_steps={args.steps}",
        "optim.batch_size=8", "max_eval_samples=32", f"run.storage_path={(WORKDIR / 'train').resolve()}",
        f"run.name={run_name}", "run.max_failures=0", f"out={WORKDIR / run_name}",
    ])
    start = time.perf_counter()
    outcome = train(config)
    record["train"] = {"seconds": time.perf_counter() - start, "metrics": outcome.metrics,
                       "exported": str(outcome.exported), "zero_stage": 3, "precision": config.precision}

    catalogue = Catalogue.load(str(data), str(features), [80], str(WORKDIR / "serve-items"))
    history = example_history(data)
    liked = [h["item_id"] for h in history if h["liked"]]
    disliked = [h["item_id"] for h in history if not h["liked"]]
    query = Query({"liked_ids": liked, "liked_titles": [catalogue.titles[i] for i in liked],
                   "disliked_ids": disliked, "disliked_titles": [catalogue.titles[i] for i in disliked]},
                  [(i, catalogue.titles[i]) for i in sorted(catalogue.titles)[:32]])
    scores = {}
    for device in ("cuda", "cpu"):
        served = ServedModel.load("best", str(outcome.exported), catalogue, device=device)
        begin = time.perf_counter()
        scores[device] = served.score([query], rows_per_pass=32)[0]
        record[f"serve_{device}_ms"] = 1000 * (time.perf_counter() - begin)
    difference = float(np.max(np.abs(scores["cuda"] - scores["cpu"])))
    record["serve"] = {"candidates": len(query.targets), "max_abs_diff_gpu_vs_cpu": difference}
    record["ok"] = bool(all(np.isfinite(v).all() for v in scores.values()) and difference < 1e-2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps(record, indent=2, default=str))
    raise SystemExit(0 if record["ok"] else 1)


if __name__ == "__main__":
    main()
