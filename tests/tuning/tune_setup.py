"""Search spaces for the tuning tests (a module of its own so tests can import it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atflrec.config import merge


def make_space(benchmark: Path, base_model: Path, out: Path, features: Path, **overrides: Any) -> dict[str, Any]:
    """A search space as data: 1-worker trials of the tiny model, 4 trials, two Mel-bin counts that
    the search builds into ``features`` from the benchmark's data; dotted keyword overrides
    (``space.<knob>`` sets one knob)."""
    data: dict[str, Any] = {
        "train": {
            "model": {"base_model": str(base_model), "encoder": {"n_mels": 8, "width": 16},
                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}},
            "samples": str(benchmark / "samples"), "features": str(features),
            "shots": 8, "seed": 0, "eval_splits": ["val", "test"], "max_eval_samples": 8,
            "optim": {"lr": 1e-2, "encoder_lr": 1e-2, "batch_size": 4, "epochs": 2},
            "deepspeed": {"config": "deepspeed/zero2_cpu"},
            "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "run": {"keep_best": 1},
        },
        "space": {"model.lora.r": [2, 4], "model.encoder.n_mels": [8, 12],
                  "optim.lr": {"loguniform": [1e-3, 3e-2]}},
        "data": str(benchmark / "data"), "feature_clip_seconds": 0.5,
        "num_samples": 4, "scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 2},
        "search": "random", "seed": 0, "out": str(out),
    }
    # A knob (``space.<knob>``) is one key that holds dots; every other override is a dotted path.
    data["space"].update({k.removeprefix("space."): v for k, v in overrides.items() if k.startswith("space.")})
    return merge(data, {k: v for k, v in overrides.items() if not k.startswith("space.")})
