"""Peak memory of each Ray Train worker training a ~1B-parameter base model under ZeRO-3 on CPU.

    python bench/zero3_memory.py --out bench/results/zero3_memory.json

Writes a randomly initialised Llama-architecture model (``--size 1b``: hidden 2048, 18 layers,
MLP 5504, 16 heads, vocabulary 32000, untied head: 1.04e9 parameters, 4.2 GB in float32) as a
sharded safetensors directory, without ever holding it whole, plus tiny benchmark data (synth,
8-bin features, samples with 2-item histories). Then runs ``atflrec train``'s real path
(:func:`atflrec.training.distributed.train`) with ``--workers`` CPU workers (2 by default; gloo),
the shipped ``deepspeed/zero3_cpu`` config and early fusion (``--activation-checkpointing``: with
``optim.activation_checkpointing``): 2 optimizer steps per worker, one validation, the final
evaluation, while a thread samples every worker's memory (``/proc/<pid>/status``:
``VmHWM``, the kernel's peak resident set, and ``RssAnon``, resident memory not backed by a file).

The baseline, in the same run: a separate process building the same model the way every worker did
before ZeRO-3 workers built it partitioned (:func:`atflrec.training.local.build_model` without
``zero3_config``: the whole base model in host memory), and its peak RSS.

Writes ``params``, ``workers``, ``peak_rss_gb_per_worker``, ``full_model_gb`` (params x 4 bytes),
the baseline, settings, machine and date to ``--out``, and a plot of the samples beside it (same
name, ``.png``). ``--size tiny`` runs the same in seconds (the test's size). GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from atflrec.cluster.local import own_dashboard, train_worker_pids
from atflrec.io import atomic_write_text
from atflrec.testing import memory_status
from atflrec.training.distributed import train
from atflrec.training.distributed_config import TrainConfig

GB = 1e9
DEFAULT_WORKERS = 2
SHARD_BYTES = 512 * 1024**2  # safetensors shard size: the writer holds one shard at a time
PACKAGES = ("atflrec", "ray", "torch", "deepspeed", "transformers", "peft")
N_MELS = 8


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    vocab: int


SIZES = {
    "1b": LlamaShape(hidden=2048, layers=18, intermediate=5504, heads=16, vocab=32000),
    "270m": LlamaShape(hidden=1024, layers=16, intermediate=2752, heads=16, vocab=32000),
    "tiny": LlamaShape(hidden=64, layers=2, intermediate=128, heads=4, vocab=512),
}


# --- the model and the data ------------------------------------------------------------------

def llama_config(shape: LlamaShape, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.heads, vocab_size=shape.vocab,
        max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def tensor_shapes(config: Any) -> dict[str, torch.Size]:
    """Every tensor of the model's checkpoint, without allocating it."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return {name: p.shape for name, p in LlamaForCausalLM(config).state_dict().items()}


def write_random_llama(shape: LlamaShape, directory: Path, seed: int = 0) -> int:
    """A Hugging Face model directory of a random Llama of ``shape`` (float32, sharded), initialised
    as transformers does (normal(0, 0.02) matrices, unit norms), one shard in memory at a time, or
    the one already there; returns its parameter count. The tokenizer is the tests' tiny one: ids
    stay far below the vocabulary."""
    from safetensors.torch import save_file

    from atflrec.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = llama_config(shape, tokenizer)
    shapes = tensor_shapes(config)
    params = sum(s.numel() for s in shapes.values())
    if (directory / "config.json").is_file():  # written last: a complete model from an earlier run
        return params
    generator = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    number = 0
    for name, size in shapes.items():
        if shard and 4 * (sum(t.numel() for t in shard.values()) + size.numel()) > SHARD_BYTES:
            save_file(shard, str(directory / f"shard-{number:05d}.safetensors"))
            shard, number = {}, number + 1
        shard[name] = torch.ones(size) if len(size) == 1 else torch.empty(size).normal_(0.0, 0.02, generator=generator)
        weight_map[name] = f"shard-{number:05d}.safetensors"
    save_file(shard, str(directory / f"shard-{number:05d}.safetensors"))
    index = {"metadata": {"total_size": params * 4}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    tokenizer.save_pretrained(directory)
    config.save_pretrained(directory)
    return params


def prepare_data(work: Path) -> None:
    """Tiny benchmark data, 8-bin features and samples with 2-item histories under ``work`` (kept if there)."""
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.samples import SampleConfig, make_samples

    if (work / "samples" / "samples.json").is_file():  # written last: a finished set
        return
    generate(SynthConfig(users=6, items=16, clip_seconds=0.5, interactions_per_user=(6, 8)), work / "data")
    build_feature_store(work / "data", str(work / "features"), FeatureConfig(n_mels=[N_MELS], clip_seconds=0.5))
    make_samples(load_dataset(work / "data"), work / "samples",
                 SampleConfig(history_len=2, val_per_user=1, test_per_user=1, cold_item_fraction=0.0))


def train_config(work: Path, model_dir: Path, workers: int, activation_checkpointing: bool = False) -> TrainConfig:
    """``workers`` workers, ZeRO-3, early fusion; 2 training samples per worker in micro-batches of 1:
    2 steps per worker."""
    return TrainConfig.model_validate({
        "model": {"base_model": str(model_dir), "encoder": {"n_mels": N_MELS, "width": 16},
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}},
        "samples": str(work / "samples"), "features": str(work / "features"), "shots": 2 * workers, "seed": 0,
        "optim": {"lr": 1e-3, "encoder_lr": 1e-3, "batch_size": 1, "epochs": 1,
                  "activation_checkpointing": activation_checkpointing},
        "eval_splits": ["val"], "eval_batch_size": 1,
        "deepspeed": {"config": "deepspeed/zero3_cpu"},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "run": {"name": f"zero3-memory-{time.time_ns()}", "storage_path": str(work / "runs"), "keep_best": 1},
    })


def prompt_tokens(config: TrainConfig) -> dict[str, int]:
    """Token counts of the validation prompts (audio placeholders included), as the workers see them."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from atflrec.model.batch import AUDIO, Collator
    from atflrec.prompts import add_audio_token
    from atflrec.samples import SAMPLE_SCHEMA, read_samples
    from atflrec.training.local import load_item_features

    rows = read_samples(config.samples, "val").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(config.model.base_model)
    add_audio_token(tokenizer)
    features = load_item_features(config.features, N_MELS, [pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)])
    encoder = config.model.encoder
    collator = Collator(tokenizer, config.model.prompt, [AUDIO], encoder.tokens_per_item, N_MELS, features)
    lengths = [int(collator([r]).prompts[AUDIO].attention_mask.sum()) for r in rows]
    return {"min": min(lengths), "max": max(lengths)}


# --- memory sampling -----------------------------------------------------------------------------

def status_gb(pid: int) -> dict[str, float]:
    """``VmRSS``, ``VmHWM`` (peak RSS) and ``RssAnon`` of a process, in GB."""
    return {key: value / GB for key, value in memory_status(pid).items()}


@dataclass
class MemorySampler:
    """Samples every Ray Train worker's memory in a thread until stopped."""

    interval: float = 0.5
    start: float = field(default_factory=time.monotonic)
    samples: dict[int, list[tuple[float, float, float]]] = field(default_factory=dict)  # pid → (s, RSS, anon)
    peaks: dict[int, dict[str, float]] = field(default_factory=dict)  # pid → highest VmHWM and RssAnon seen

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in train_worker_pids():
                try:
                    status = status_gb(pid)
                except (FileNotFoundError, ProcessLookupError):
                    continue  # exited between the listing and the read
                now = time.monotonic() - self.start
                sample = (round(now, 1), round(status["VmRSS"], 3), round(status["RssAnon"], 3))
                self.samples.setdefault(pid, []).append(sample)
                peak = self.peaks.setdefault(pid, {"rss": 0.0, "anon": 0.0})
                peak["rss"] = max(peak["rss"], status["VmHWM"])
                peak["anon"] = max(peak["anon"], status["RssAnon"])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- the baseline: one process building the model whole --------------------------------------

def whole_build_peak(model_dir: Path) -> float:
    """Peak RSS (GB) of a fresh process that builds the model as a worker did before partitioned init."""
    script = (
        "import json, resource, sys\n"
        "from atflrec.model.network import ModelConfig\n"
        "from atflrec.training.local import build_model\n"
        f"model = build_model(ModelConfig(base_model=sys.argv[1], encoder={{'n_mels': {N_MELS}, 'width': 16}}))\n"
        "sum(float(p.sum()) for p in model.parameters())\n"  # weights are read lazily from the file: touch them all
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"  # KiB on Linux
    )
    done = subprocess.run([sys.executable, "-c", script, str(model_dir)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) * 1024 / GB


# --- the run ---------------------------------------------------------------------------------------

def run_benchmark(size: str, work: Path, interval: float = 0.5, workers: int = DEFAULT_WORKERS,
                  activation_checkpointing: bool = False) -> dict[str, Any]:
    """Everything the result file holds, less machine and date; ``samples`` holds the timelines."""
    import ray

    started = not ray.is_initialized()
    if started:
        # Its own local cluster, whatever else runs on the machine; a small object store.
        ray.init(address="local", num_cpus=workers, object_store_memory=512 * 1024**2, log_to_driver=False,
                 **own_dashboard())
    try:
        shape = SIZES[size]
        model_dir = work / f"llama-{size}"
        params = write_random_llama(shape, model_dir)
        prepare_data(work)
        config = train_config(work, model_dir, workers, activation_checkpointing)
        sampler = MemorySampler(interval)
        began = time.monotonic()
        try:
            outcome = train(config)
        finally:
            sampler.stop()
        seconds = time.monotonic() - began
    finally:
        if started:
            ray.shutdown()
    baseline = whole_build_peak(model_dir)  # after the run: the two never share the machine's memory
    pids = sorted(sampler.peaks)
    full = params * 4 / GB
    return {
        "params": params,
        "workers": workers,
        "peak_rss_gb_per_worker": [round(sampler.peaks[p]["rss"], 3) for p in pids],
        "full_model_gb": round(full, 3),
        "peak_anon_gb_per_worker": [round(sampler.peaks[p]["anon"], 3) for p in pids],
        "peak_rss_over_full_model": [round(sampler.peaks[p]["rss"] / full, 3) for p in pids],
        "baseline": {
            "what": "one process building the same model whole (build_model without zero3_config), "
                    "as every ZeRO-3 worker did before partitioned init",
            "peak_rss_gb": round(baseline, 3),
        },
        "settings": {
            "model": {**asdict(shape), "architecture": "LlamaForCausalLM", "dtype": "float32", "init": "random"},
            "deepspeed": config.deepspeed.config, "fusion": config.model.fusion.strategy,
            "activation_checkpointing": config.optim.activation_checkpointing,
            "shots": config.shots, "batch_size": config.optim.batch_size,
            "optimizer_steps_per_worker": len(outcome.losses.get("shared", [])),
            "prompt_tokens": prompt_tokens(config), "sample_interval_s": interval,
            "threads_per_worker": config.scaling.torch_threads(),
        },
        "losses": outcome.losses,
        "train_seconds": round(seconds, 1),
        "samples": {str(p): sampler.samples[p] for p in pids},
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n, timeline in enumerate(result["samples"].values()):
        t, rss, anon = zip(*timeline)
        line, = ax.plot(t, rss, label=f"worker {n + 1}: RSS")
        ax.plot(t, anon, linestyle="--", color=line.get_color(), label=f"worker {n + 1}: anonymous")
    ax.axhline(result["full_model_gb"], color="black", linestyle=":", label="full model (params x 4 B)")
    ax.axhline(result["baseline"]["peak_rss_gb"], color="red", linestyle="-.", label="one process building it whole")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("GB")
    ax.set_title(f"ZeRO-3 with partitioned init: {result['params'] / 1e9:.2f}B params, {result['workers']} CPU workers")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(result: dict[str, Any], out: Path, note: str | None) -> None:
    result = {**result,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1)},
              "versions": {p: version(p) for p in PACKAGES},
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              **({"note": note} if note else {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--out", type=Path, default=Path("bench/results/zero3_memory.json"))
    parser.add_argument("--work", type=Path, help="working directory (model, data, run); default: a temporary one")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between memory samples (the peaks are the kernel's)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="Ray Train workers, one CPU each (more than the cores share them)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute the LLM's activations in backward (optim.activation_checkpointing)")
    parser.add_argument("--note", help="anything else running on the machine")
    args = parser.parse_args(argv)
    # On a shared machine: should memory run out, the kernel ends this benchmark (and the Ray
    # processes it starts, which inherit the setting), not the machine's other work.
    Path("/proc/self/oom_score_adj").write_text("1000")
    with tempfile.TemporaryDirectory(prefix="zero3-memory-") as tmp:
        result = run_benchmark(args.size, args.work or Path(tmp), args.interval, args.workers,
                               args.activation_checkpointing)
    write_result(result, args.out, args.note)
    print(f"{result['params']:,} params, full model {result['full_model_gb']} GB; peak RSS per worker "
          f"{result['peak_rss_gb_per_worker']} GB (anonymous {result['peak_anon_gb_per_worker']}); "
          f"one process building it whole: {result['baseline']['peak_rss_gb']} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
