"""Serving benchmark: latency and throughput through Ray Serve on loopback, batched and unbatched,
and shared-prefix catalogue scoring against one full prompt per candidate on the real SmolLM2.

    python bench/serve_load.py --out bench/results/serve.json

Builds a small built-in benchmark dataset with 40-bin features in a temporary directory (or
``--work DIR``, reused when present) and measures, in one run:

* **load**: ``POST /v1/score`` requests (a 5-item history, 8 candidates, seeded) over HTTP on
  127.0.0.1 at concurrency 1, 8 and 32, against two deployments side by side, one replica each
  (1 CPU, 1 torch thread): ``batched`` (``max_batch_size`` 32) and ``unbatched`` (1). At each
  level the two take turns ``--repeats`` times and each keeps its best run. Each run is bounded
  in requests and seconds. p50/p95/p99 latency (ms), throughput (requests/s), mean batch size.
  The model is ``--load-model``: ``tiny`` (default; a random 2-layer Llama with SmolLM2's
  tokenizer and chat template, so prompts are real but on a 2-core machine the figures are about
  serving -- HTTP, routing, batching, prefix sharing -- rather than matmul speed) or ``smollm2``.
* ``serve_overhead_ms_c1``: p50 of the unbatched deployment at concurrency 1 minus the p50 of
  the same model called in this process (same catalogue, query and thread count). It is split
  into ``serve_floor_p50_ms_c1`` (an empty FastAPI-ingress deployment, same options and bodies:
  Serve's own HTTP path on this machine) and ``app_overhead_ms_c1`` (the rest: this app's
  request handling).
* ``recommend_prefix_vs_naive``: scoring the whole catalogue for one 10-item history with the
  real SmolLM2 (early fusion, 40 bins, one torch thread), shared prefix
  (``atflrec.model.prefix``) against the offline path with one full prompt per candidate
  (``Collator`` + ``predict``); the scores agree.

Ratios are measured against baselines of the same run. Goals: ``batched_vs_unbatched_c32`` >= 1.5,
``recommend_prefix_vs_naive`` >= 3, ``serve_overhead_ms_c1`` <= 15, ``errors`` == 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

GOALS = {"batched_vs_unbatched_c32": (">=", 1.5), "recommend_prefix_vs_naive": (">=", 3.0),
         "serve_overhead_ms_c1": ("<=", 15.0), "errors": ("==", 0)}
CONCURRENCY = (1, 8, 32)
PACKAGES = ("atflrec", "ray", "torch", "transformers", "peft", "fastapi", "httpx")
N_MELS = 40
APP = "atflrec-bench"


def tiny_llama(directory: Path, tokenizer_dir: str) -> None:
    """A random 2-layer Llama (hidden 64) with SmolLM2's tokenizer: real prompts, little compute."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def prepare(work: Path, catalogue: int, load_model: str) -> dict[str, Path]:
    """Dataset, feature store and the two artifacts (load model, SmolLM2) under ``work``, reused."""
    import torch

    from atflrec.base_model.fetch import resolve_base_model
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.features.store import load_features
    from atflrec.model.artifact import save_artifact
    from atflrec.model.network import ModelConfig
    from atflrec.training.local import build_model

    paths = {"dataset": work / "data", "features": work / "features", "load": work / f"model-{load_model}",
             "smollm2": work / "model-smollm2"}
    if not (paths["features"] / "manifest.json").is_file():
        synth = SynthConfig(users=40, items=catalogue, clip_seconds=2.0, interactions_per_user=(10, 20))
        generate(synth, paths["dataset"])
        build_feature_store(paths["dataset"], str(paths["features"]), FeatureConfig(n_mels=[N_MELS], clip_seconds=2.0))
    clips = list(load_features(str(paths["features"]), N_MELS).values())
    bases = {"smollm2": "smollm2-135m-instruct", "load": "smollm2-135m-instruct"}
    if load_model == "tiny":
        bases["load"] = str(work / "tiny-base")
        if not (work / "tiny-base" / "config.json").is_file():
            tiny_llama(work / "tiny-base", resolve_base_model(bases["smollm2"]))
    for name, base in bases.items():
        if not (paths[name] / "atflrec_model.json").is_file():
            config = ModelConfig(base_model=base, encoder={"n_mels": N_MELS}, fusion={"strategy": "early"})
            model = build_model(config, seed=0)
            model.encoder.fit_normalisation(clips)
            with torch.no_grad():  # fresh LoRA B is zero: give the adapter an effect, as training would
                for n, p in model.llm.named_parameters():
                    if "lora_B" in n:
                        p.normal_(std=0.01)
            save_artifact(model, paths[name])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_for(item_ids: list[str], count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        picked = rng.choice(len(item_ids), size=13, replace=False)
        bodies.append({"history": [{"item_id": item_ids[i], "liked": bool(rng.integers(2))} for i in picked[:5]],
                       "candidates": [item_ids[i] for i in picked[5:]]})
    return bodies


async def run_level(url: str, bodies: list[dict[str, Any]], concurrency: int, max_seconds: float) -> dict[str, Any]:
    """Send ``bodies`` with ``concurrency`` requests in flight, stopping early after ``max_seconds``."""
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = iter(bodies)
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for body in queue:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            try:
                ok = (await client.post(url, json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "seconds": round(wall, 3),
            "throughput_rps": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


MODES = {"batched": 32, "unbatched": 1}  # max_batch_size


def serve_levels(paths: dict[str, Path], work: Path, port: int, wait_s: float, bodies: list[dict[str, Any]],
                 per_level: dict[int, int], max_seconds: float, repeats: int) -> tuple[dict[str, Any], int]:
    """Both deployments side by side (one replica each); at every level the modes take turns,
    ``repeats`` times, and each keeps its best run, which damps other work on the machine.
    Returns the kept runs and the errors of all runs."""
    import httpx
    from ray import serve

    from atflrec.serving.app import make_app
    from atflrec.serving.config import ServeArgs

    options = {"num_replicas": 1, "max_ongoing_requests": 64,
               "ray_actor_options": {"num_cpus": 1, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}}}
    base = f"http://127.0.0.1:{port}"
    for mode, batch in MODES.items():
        args = ServeArgs(models={"load": str(paths["load"])}, dataset=str(paths["dataset"]),
                         features=str(paths["features"]), items_dir=str(work / "items"),
                         batching={"max_batch_size": batch, "batch_wait_timeout_s": wait_s if batch > 1 else 0.0,
                                   "rows_per_pass": 64})
        serve.run(make_app(args, options), name=f"{APP}-{mode}", route_prefix=f"/{mode}")
    levels: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
    errors = 0
    try:
        for mode in MODES:  # warm-up: first calls, connections
            asyncio.run(run_level(f"{base}/{mode}/v1/score", bodies[:16], 4, max_seconds))
        for c in CONCURRENCY:
            for _ in range(repeats):
                for mode in MODES:
                    before = httpx.get(f"{base}/{mode}/healthz").json()
                    run = asyncio.run(run_level(f"{base}/{mode}/v1/score", bodies[: per_level[c]], c, max_seconds))
                    after = httpx.get(f"{base}/{mode}/healthz").json()  # one replica: its own counters
                    run["mean_batch_size"] = round(
                        (after["queries"] - before["queries"]) / max(1, after["batches"] - before["batches"]), 2)
                    errors += run["errors"]
                    best = levels[mode].get(f"c{c}")
                    if best is None or run["throughput_rps"] > best["throughput_rps"]:
                        levels[mode][f"c{c}"] = run
                    print(f"  {mode:<9} c{c:<2} {run}", flush=True)
    finally:
        for mode in MODES:
            serve.delete(f"{APP}-{mode}")
    return levels, errors


def serve_floor_p50_ms(port: int, bodies: list[dict[str, Any]], calls: int, max_seconds: float) -> float:
    """p50 at c1 of an empty FastAPI-ingress deployment (same replica options, same bodies): what
    Serve's HTTP path costs on this machine with no work behind it."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1})
    @serve.ingress(api)
    class Empty:
        @api.post("/v1/score")
        async def score(self, body: dict) -> dict:
            return {"scores": []}

    serve.run(Empty.bind(), name=f"{APP}-floor", route_prefix="/floor")
    try:
        url = f"http://127.0.0.1:{port}/floor/v1/score"
        asyncio.run(run_level(url, bodies[:16], 1, max_seconds))  # warm-up
        return asyncio.run(run_level(url, bodies[:calls], 1, max_seconds))["p50_ms"]
    finally:
        serve.delete(f"{APP}-floor")


def direct_p50_ms(paths: dict[str, Path], bodies: list[dict[str, Any]], calls: int) -> float:
    """The served model called in this process: the same catalogue, query building and scoring."""
    import torch

    from atflrec.model.artifact import read_meta
    from atflrec.serving.app import build_query
    from atflrec.serving.catalogue import Catalogue
    from atflrec.serving.schemas import ScoreRequest
    from atflrec.serving.scorer import ServedModel, audio_mels

    torch.set_num_threads(1)  # as in the replica
    catalogue = Catalogue.load(str(paths["dataset"]), str(paths["features"]), [audio_mels(read_meta(paths["load"]))],
                               str(paths["load"].parent / "items-direct"))
    served = ServedModel.load("load", str(paths["load"]), catalogue)
    times = []
    for body in bodies[:calls]:
        request = ScoreRequest.model_validate(body)
        start = time.perf_counter()
        served.score([build_query(catalogue, request.history, request.candidates, "candidates")], 64)
        times.append(time.perf_counter() - start)
    torch.set_num_threads(os.cpu_count() or 1)
    return float(np.percentile(np.array(times[2:]) * 1000, 50))


def prefix_vs_naive(paths: dict[str, Path], catalogue_size: int) -> dict[str, Any]:
    """Whole-catalogue scoring for one history on SmolLM2: shared prefix vs one prompt per candidate."""
    import pyarrow.parquet as pq
    import torch

    from atflrec.features.store import load_features
    from atflrec.model.artifact import load_artifact
    from atflrec.model.prefix import Query
    from atflrec.serving.scorer import AudioTokens
    from atflrec.training.local import make_collator, predict

    torch.set_num_threads(1)  # both paths alike; on a shared machine, multi-threaded small matmuls stall
    model = load_artifact(paths["smollm2"])
    features = load_features(str(paths["features"]), N_MELS)
    items = pq.read_table(paths["dataset"] / "items.parquet", columns=["item_id", "title"]).to_pylist()[:catalogue_size]
    titles = {r["item_id"]: r["title"] for r in items}
    ids = list(titles)
    history, candidates = ids[:10], ids[10:]
    liked, disliked = history[::2], history[1::2]
    hist = {"liked_ids": liked, "liked_titles": [titles[i] for i in liked],
            "disliked_ids": disliked, "disliked_titles": [titles[i] for i in disliked]}
    query = Query(hist, [(i, titles[i]) for i in candidates])
    rows = [{"sample_id": i, "user_id": "u", "item_id": i, "title": titles[i], "label": 0, "timestamp": 0, **hist}
            for i in candidates]
    collator = make_collator(model, features)
    model.score_queries([Query(hist, query.targets[:2])], features, AudioTokens(model.encoder, features))  # warm-up
    start = time.perf_counter()
    shared = model.score_queries([query], features, AudioTokens(model.encoder, features), rows_per_pass=32)[0]
    shared_s = time.perf_counter() - start
    start = time.perf_counter()
    naive = predict(model, rows, collator, batch_size=8)
    naive_s = time.perf_counter() - start
    torch.set_num_threads(os.cpu_count() or 1)
    return {"candidates": len(candidates), "history": len(history), "torch_threads": 1,
            "shared_prefix_s": round(shared_s, 3),
            "one_prompt_per_candidate_s": round(naive_s, 3), "max_abs_score_diff": float(np.abs(shared - naive).max()),
            "ratio": naive_s / shared_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, help="data directory to create or reuse (default: a temporary one)")
    parser.add_argument("--load-model", choices=["tiny", "smollm2"], default="tiny", help="model behind the load test")
    parser.add_argument("--catalogue", type=int, default=64,
                        help="catalogue items (the recommend comparison scores all but 10)")
    parser.add_argument("--requests", type=int, default=320, help="requests per level at c32 (c8: half, c1: a quarter)")
    parser.add_argument("--batch-wait-s", type=float, default=0.02, help="batch_wait_timeout_s when batched")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode and level; the best one is kept")
    parser.add_argument("--max-seconds", type=float, default=25.0, help="time bound of each load level")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import ray
    from ray import serve

    per_level = {1: args.requests // 4, 8: args.requests // 2, 32: args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        paths = prepare(work, args.catalogue, args.load_model)
        item_ids = pq.read_table(paths["dataset"] / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
        bodies = requests_for(item_ids, max(per_level.values()), seed=0)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        load, errors = serve_levels(paths, work, port, args.batch_wait_s, bodies, per_level, args.max_seconds,
                                    args.repeats)
        floor = serve_floor_p50_ms(port, bodies, per_level[1], args.max_seconds)
        serve.shutdown()
        ray.shutdown()
        direct = direct_p50_ms(paths, bodies, 60)
        recommend = prefix_vs_naive(paths, args.catalogue)

    c32 = {mode: load[mode]["c32"]["throughput_rps"] for mode in load}
    figures = {
        "batched_vs_unbatched_c32": c32["batched"] / c32["unbatched"],
        "recommend_prefix_vs_naive": recommend["ratio"],
        "serve_overhead_ms_c1": load["unbatched"]["c1"]["p50_ms"] - direct,
        "errors": errors,
    }
    compare = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}
    result = {
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()},
        "goals": {k: f"{op} {v}" for k, (op, v) in GOALS.items()},
        "goals_met": {k: compare[op](figures[k], v) for k, (op, v) in GOALS.items()},
        "load": load,
        "direct_p50_ms_c1": round(direct, 2),
        "batched_overhead_ms_c1": round(load["batched"]["c1"]["p50_ms"] - direct, 2),
        # Of serve_overhead_ms_c1: Serve's own HTTP + FastAPI path (an empty app), and the rest (this app).
        "serve_floor_p50_ms_c1": round(floor, 2),
        "app_overhead_ms_c1": round(load["unbatched"]["c1"]["p50_ms"] - direct - floor, 2),
        "recommend": recommend,
        "setup": {"load_model": args.load_model, "replicas": 1, "replica_cpus": 1, "torch_threads": 1,
                  "batched": {"max_batch_size": 32, "batch_wait_timeout_s": args.batch_wait_s},
                  "request": "POST /v1/score, 5-item history, 8 candidates", "catalogue": args.catalogue,
                  "n_mels": N_MELS, "requests_per_level": per_level, "max_seconds_per_level": args.max_seconds,
                  "client": "httpx.AsyncClient in the benchmark process, same machine"},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
        "versions": {name: version(name) for name in PACKAGES} | {"python": platform.python_version()},
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in (*figures, "goals_met")}, indent=2))


if __name__ == "__main__":
    main()
