"""Tuning benchmark: ASHA against FIFO on the same space, trials and seed.

    python bench/tune.py --out bench/results/tune.json

Builds small benchmark data (synth, 8- and 16-bin features, samples) and the tiny local base model
in a temporary directory (or ``--work DIR``, reused when present), then runs the same search twice
in one Ray cluster: ``--trials`` trials of ``--epochs`` epochs each (1-worker Ray Train runs, early
fusion: one report per epoch), random search with one seed, so both runs draw the same trial
configs (the JSON lists them), once with ASHA (grace 1 report, reduction factor 2) and once with
FIFO (every trial runs to its end). Measures, for each: trial-epochs spent (reports made by all
trials), the best validation AUC reached, completed and stopped trials, and wall time. Ratios:
``reports_asha_vs_fifo`` (trial-epochs ASHA spent ÷ FIFO's), ``wall_asha_vs_fifo``, and
``best_auc_asha_minus_fifo``. ``--model smollm2`` uses the real SmolLM2 instead (much slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from atflrec.cluster.local import own_dashboard

PACKAGES = ("atflrec", "ray", "torch", "deepspeed", "optuna")


def prepare(work: Path, model: str) -> tuple[Path, str]:
    """Data, samples and base model under ``work`` (reused when there); the store is the search's."""
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.samples import SampleConfig, make_samples
    from atflrec.testing import build_tiny_base

    if not (work / "samples" / "samples.json").is_file():
        generate(SynthConfig(users=40, items=64, clip_seconds=1.0, interactions_per_user=(10, 16)), work / "data")
        make_samples(load_dataset(work / "data"), work / "samples", SampleConfig(cold_item_fraction=0.1))
    if model == "smollm2":
        return work, "smollm2-135m-instruct"
    if not (work / "base" / "config.json").is_file():
        build_tiny_base(work / "base")
    return work, str(work / "base")


def space(work: Path, base_model: str, scheduler: str, trials: int, epochs: int, out: Path) -> dict[str, Any]:
    return {
        "train": {
            "model": {"base_model": base_model, "encoder": {"n_mels": 8, "width": 32},
                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}},
            "samples": str(work / "samples"), "features": str(work / "features"),
            "shots": 32, "seed": 0, "eval_splits": ["val"], "max_eval_samples": 40,
            "optim": {"batch_size": 8, "epochs": epochs, "encoder_lr": 1e-2},
            "deepspeed": {"config": "deepspeed/zero2_cpu"},
            "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "run": {"keep_best": 1},
        },
        "space": {"model.lora.r": [2, 4, 8], "model.encoder.n_mels": [8, 16],
                  "model.encoder.pooling": ["mean", "max"], "optim.lr": {"loguniform": [1e-4, 3e-2]}},
        "data": str(work / "data"), "feature_clip_seconds": 1.0,
        "num_samples": trials, "scheduler": scheduler, "asha": {"grace_period": 1, "reduction_factor": 2},
        "search": "random", "seed": 0, "out": str(out),
    }


def run(work: Path, base_model: str, scheduler: str, trials: int, epochs: int) -> dict[str, Any]:
    from atflrec.tuning.search import run_search
    from atflrec.tuning.space import TuneSpace

    out = work / f"search-{scheduler}"
    start = time.perf_counter()
    run_search(TuneSpace.model_validate(space(work, base_model, scheduler, trials, epochs, out)))
    seconds = time.perf_counter() - start
    rows = pq.read_table(out / "results.parquet").to_pylist()
    knobs = [k for k in rows[0] if "." in k]
    return {
        "trial_epochs": sum(r["reports"] for r in rows),
        "best_val_auc": round(max(r["best_val_auc"] for r in rows if r["best_val_auc"] is not None), 4),
        "completed": sum(r["status"] == "completed" for r in rows),
        "stopped": sum(r["status"] == "stopped" for r in rows),
        "failed": sum(r["status"] == "error" for r in rows),
        "seconds": round(seconds, 1),
        "trials": sorted([{k: r[k] for k in knobs} | {"reports": r["reports"], "best_val_auc": r["best_val_auc"]}
                          for r in rows], key=lambda t: json.dumps({k: t[k] for k in knobs}, sort_keys=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work, base_model = prepare(Path(args.work or tmp), args.model)
        ray.init(num_cpus=os.cpu_count(), log_to_driver=False, **own_dashboard())
        results = {s: run(work, base_model, s, args.trials, args.epochs) for s in ("fifo", "asha")}
        ray.shutdown()
    asha, fifo = results["asha"], results["fifo"]
    same = [{k: v for k, v in t.items() if "." in k} for t in asha["trials"]] == \
           [{k: v for k, v in t.items() if "." in k} for t in fifo["trials"]]
    report = {
        "benchmark": "tune",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "model": args.model, "trials": args.trials, "epochs_per_trial": args.epochs,
        "same_trial_configs": same,
        "reports_asha_vs_fifo": round(asha["trial_epochs"] / fifo["trial_epochs"], 3),
        "wall_asha_vs_fifo": round(asha["seconds"] / fifo["seconds"], 3),
        "best_auc_asha_minus_fifo": round(asha["best_val_auc"] - fifo["best_val_auc"], 4),
        "asha": asha, "fifo": fifo,
        "machine": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in PACKAGES},
        "note": args.note,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"trial-epochs: ASHA {asha['trial_epochs']} vs FIFO {fifo['trial_epochs']} "
          f"({report['reports_asha_vs_fifo']:.2f}x); best val AUC: ASHA {asha['best_val_auc']:.4f} "
          f"vs FIFO {fifo['best_val_auc']:.4f}; wall {asha['seconds']:.0f} s vs {fifo['seconds']:.0f} s")


if __name__ == "__main__":
    main()
