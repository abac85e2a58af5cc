"""Feature-stage benchmark: the Ray Data pipeline against a plain loop, one multi-Mel pass against
one pass per Mel-bin count.

    python bench/features.py --clips 2000 --out bench/results/features.json

Generates ``--clips`` clips of the built-in benchmark data (``data/synth_bench_2000``
with ``items`` set to ``--clips``) into a temporary directory, or uses ``--data DIR``; then times:

* ``loop_torchaudio_*``: one process reads each file with soundfile and calls
  ``torchaudio.compliance.kaldi.fbank`` once per Mel-bin count (no store written), once with
  torch's default intra-op threads and once with one thread; the faster is the baseline;
* ``ray_pipeline``: ``build_feature_store`` into a fresh store on all cores, with Ray already
  started and its workers warmed up on a few clips first (``ray.init`` is not timed);
* ``multimel_one_pass`` / ``separate_passes``: the project's single-clip path
  (``featurise_file``) in this process on one thread, computing all Mel-bin counts per clip in one
  pass, or one pass over every file per Mel-bin count.

Writes ``ray_vs_loop`` and ``multimel_vs_separate`` (throughput ratios), absolute clips/s of every
variant (best of ``--repeats`` runs), clip count, cores, versions and date as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import ray
import soundfile as sf
import torch
from torchaudio.compliance import kaldi

from atflrec.config import load_config
from atflrec.data.format import load_dataset, resolve_audio_path, write_dataset
from atflrec.data.synth import SynthConfig, generate
from atflrec.features.clip import featurise_file
from atflrec.features.fbank import KALDI_OPTIONS
from atflrec.features.pipeline import FeatureConfig, build_feature_store

GOALS = {"ray_vs_loop": 1.6, "multimel_vs_separate": 1.8}
WARMUP_CLIPS = 16
BENCH_DATA_CONFIG = "data/synth_bench_2000"
PACKAGES = ("atflrec", "ray", "torch", "torchaudio", "pyarrow", "numpy", "soundfile")


def timed(run: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` runs (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def loop_torchaudio(paths: list[Path], n_mels: list[int]) -> None:
    """The plain way: read each file, call torchaudio's fbank once per Mel-bin count."""
    for path in paths:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        wave = torch.from_numpy(samples.mean(axis=1)).unsqueeze(0)
        for n in n_mels:
            kaldi.fbank(wave, num_mel_bins=n, **(KALDI_OPTIONS | {"sample_frequency": float(rate)}))


def clip_passes(paths: list[Path], mel_groups: list[list[int]], clip_seconds: float) -> None:
    """One pass over every file per group of Mel-bin counts, through the project's single-clip path."""
    for group in mel_groups:
        for path in paths:
            featurise_file(path.read_bytes(), path.suffix, group, clip_seconds)


def warmup_dataset(data: Path, out: Path, clips: int) -> Path:
    """A copy of the first ``clips`` items (audio included) as its own dataset."""
    dataset = load_dataset(data)
    items = dataset.items.slice(0, clips)
    for relative in items.column("audio_path").to_pylist():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolve_audio_path(data, relative), out / relative)
    ids = set(items.column("item_id").to_pylist())
    interactions = dataset.interactions.filter([i in ids for i in dataset.interactions.column("item_id").to_pylist()])
    return write_dataset(out, items, interactions)


def measure(data: Path, n_mels: list[int], clip_seconds: float, workdir: Path, repeats: int) -> dict[str, object]:
    """Time every variant on the dataset at ``data``; ``workdir`` receives the stores."""
    cores = len(os.sched_getaffinity(0))
    dataset = load_dataset(data)
    clips = dataset.items.num_rows
    paths = [resolve_audio_path(data, p) for p in dataset.items.column("audio_path").to_pylist()]
    config = FeatureConfig(n_mels=n_mels, clip_seconds=clip_seconds)

    # The loop runs with torch's default intra-op threads and with one; the faster one is the
    # baseline. (On a busy machine, several OpenMP threads per process can be many times slower.)
    default_threads = torch.get_num_threads()
    seconds = {f"loop_torchaudio_{default_threads}_threads": timed(lambda: loop_torchaudio(paths, n_mels), repeats)}
    torch.set_num_threads(1)
    seconds["loop_torchaudio_1_thread"] = timed(lambda: loop_torchaudio(paths, n_mels), repeats)
    # One thread, as in a Ray worker, for the pass comparison.
    seconds["multimel_one_pass"] = timed(lambda: clip_passes(paths, [n_mels], clip_seconds), repeats)
    seconds["separate_passes"] = timed(lambda: clip_passes(paths, [[n] for n in n_mels], clip_seconds), repeats)
    torch.set_num_threads(default_threads)
    loop_baseline = min((s, name) for name, s in seconds.items() if name.startswith("loop_"))[1]

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        warmup = warmup_dataset(data, workdir / "warmup", WARMUP_CLIPS)
        build_feature_store(warmup, str(workdir / "warmup-store"), config)
        summary, stores = None, iter(range(repeats))

        def pipeline() -> None:
            nonlocal summary
            summary = build_feature_store(data, str(workdir / f"store-{next(stores)}"), config)  # a fresh store

        seconds["ray_pipeline"] = timed(pipeline, repeats)
    finally:
        ray.shutdown()
    if summary is None or summary.featurised + summary.quarantined != clips:
        raise RuntimeError(f"the pipeline did not account for all {clips} clips: {summary}")

    variants = {
        name: {"seconds": round(s, 3), "clips_per_s": round(clips / s, 1)} for name, s in seconds.items()
    }
    ratios = {
        "ray_vs_loop": seconds[loop_baseline] / seconds["ray_pipeline"],
        "multimel_vs_separate": seconds["separate_passes"] / seconds["multimel_one_pass"],
    }
    return {
        "benchmark": "features",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "clips": clips,
        "cores": cores,
        "n_mels": n_mels,
        "clip_seconds": clip_seconds,
        "repeats": repeats,
        **{name: round(value, 2) for name, value in ratios.items()},
        "goals": GOALS,
        "goals_met": {name: ratios[name] >= goal for name, goal in GOALS.items()},
        "variants": variants,
        "loop_baseline": loop_baseline,
        "ray_pipeline_quarantined": summary.quarantined,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "versions": {name: version(name) for name in PACKAGES} | {"python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2000, help="number of benchmark clips (default 2000)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--n-mels", default="40,80,128", help="comma-separated Mel-bin counts (default 40,80,128)")
    parser.add_argument("--clip-seconds", type=float, default=4.0, help="clip length for the pipeline (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark-data seed")
    parser.add_argument("--repeats", type=int, default=1, help="time each variant this often, keep the best")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--data", type=Path, help="benchmark this dataset instead of generating --clips clips")
    args = parser.parse_args()
    n_mels = [int(n) for n in args.n_mels.split(",")]
    with tempfile.TemporaryDirectory(prefix="atflrec-bench-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            synth = load_config(SynthConfig, BENCH_DATA_CONFIG, [f"items={args.clips}", f"seed={args.seed}"])
            generate(synth, data)
        result = measure(data, n_mels, args.clip_seconds, Path(tmp), args.repeats)
    result["data"] = str(args.data) if args.data else f"built-in benchmark data, seed {args.seed}"
    if args.note:
        result["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("clips", "cores", "ray_vs_loop", "multimel_vs_separate")} | {
        name: v["clips_per_s"] for name, v in result["variants"].items()}, indent=2))


if __name__ == "__main__":
    main()
