"""Serving benchmark: latency and throughput through Ray Serve on loopback, batched and unbatched;
shared-prefix catalogue scoring against one full prompt per candidate; ``/v1/recommend`` at
catalogue scale; and the quality of its two stages against scoring the whole catalogue.

    python bench/serve_load.py --out bench/results/serve.json [--model runs/demo/model]
    python bench/serve_load.py --out /tmp/serve.json --quick   # smoke run: tiny model, small sizes

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
  Serve's own HTTP path on this machine) and ``serve_app_overhead_ms_c1`` (the rest: this app's
  request handling).
* ``recommend_prefix_vs_naive``: scoring the whole catalogue for one 10-item history with the
  real SmolLM2 (early fusion, 40 bins, one torch thread), shared prefix
  (``atflrec.model.prefix``) against the offline path with one full prompt per candidate
  (``Collator`` + ``predict``); the scores agree.
* ``recommend_p50_ms``: ``POST /v1/recommend`` (a 10-item history, k 10, seeded) at concurrency
  1 over HTTP on 127.0.0.1, the app with its default settings (retrieval of
  ``rerank_candidates`` 50, then the LLM re-ranks them) and the real SmolLM2 (early fusion, 40
  bins), one replica with ``--recommend-threads`` torch threads, at each of ``--scale-sizes``
  catalogue items (1,000, 10,000, 100,000). A catalogue of n items is the benchmark dataset's
  items followed by copies of them under new ids (``<id>~<copy>``), round-robin, written as a
  dataset (same titles, tags and audio files; the interactions, hence the likes, stay the
  originals') and a feature store whose rows for a copy hold its original's stored features:
  nothing is featurised again. Per size also: the retrieval index's build time (built and saved
  in this process by the app's own ``catalogue_index``, as a replica's first start does; the
  replica then loads it), the retrieval stage alone in process (p50), and the deployment time.
* **quality** (``--model DIR``, a trained artifact; skipped without one): held-out users of the
  test split the artifact was trained against (``--samples``, ``--data``, ``--features`` default to
  what the artifact records). A user's test samples are their latest warm interactions; the
  history is the earliest test sample's (a later one's history holds the earlier test item), and
  the held-out liked items are the test items labelled 1. ``--quality-users`` seeded users with at
  least one. For each, the catalogue minus the history is ranked (a) by the model's shared-prefix
  scorer over all of it and (b) as ``/v1/recommend`` ranks it, through the app's own functions
  (``retrieve_shortlist`` on the index ``catalogue_index`` builds, ``build_query``, the served
  scorer, ``top_k``). Reported: NDCG@10 of both, their ratio ``two_stage_ndcg10_vs_full``, and
  ``retrieval_recall_at_candidates`` (the share of held-out liked items in the shortlist).

Ratios are measured against baselines of the same run. Goals: ``batched_vs_unbatched_c32`` >= 1.5,
``recommend_prefix_vs_naive`` >= 3, ``serve_overhead_ms_c1`` <= 15, ``serve_app_overhead_ms_c1``
<= 3, ``recommend_p50_ms`` at 100,000 items <= 1500, ``recommend_100k_vs_1k`` <= 2,
``two_stage_ndcg10_vs_full`` >= 0.95, ``errors`` == 0 (every load level and every recommend).
A goal whose figure was not measured (other sizes, no ``--model``) is ``null`` in ``goals_met``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

GOALS = {"batched_vs_unbatched_c32": (">=", 1.5), "recommend_prefix_vs_naive": (">=", 3.0),
         "serve_overhead_ms_c1": ("<=", 15.0), "serve_app_overhead_ms_c1": ("<=", 3.0),
         "recommend_p50_ms.100000": ("<=", 1500.0), "recommend_100k_vs_1k": ("<=", 2.0),
         "two_stage_ndcg10_vs_full": (">=", 0.95), "errors": ("==", 0)}
CONCURRENCY = (1, 8, 32)
PACKAGES = ("atflrec", "ray", "torch", "transformers", "peft", "fastapi", "httpx", "faiss-cpu")
N_MELS = 40
APP = "atflrec-bench"
SMOLLM2 = "smollm2-135m-instruct"
K = 10  # recommendations per request, and the cut of NDCG
HISTORY = 10  # history entries of a recommend request
WARMUP = 2  # recommend requests sent before the timed ones (first calls, connections)
PART_ROWS = 8192  # items per part file of an expanded feature store: bounds the writer's memory
MAX_SCALE_ITEMS = 1_000_000
# What a flag left unset becomes: the full measurement, or (--quick) a smoke run of every part.
FULL = {"scale_sizes": [1_000, 10_000, 100_000], "recommend_requests": 20, "quality_users": 20,
        "requests": 320, "repeats": 2, "max_seconds": 25.0}
QUICK = {"scale_sizes": [200, 400, 800], "recommend_requests": 4, "quality_users": 3,
         "requests": 32, "repeats": 1, "max_seconds": 10.0}


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


def prepare(work: Path, catalogue: int, models: set[str]) -> dict[str, Path]:
    """Dataset, feature store and the artifacts ``models`` names (``tiny``, ``smollm2``) under
    ``work``, reused when present."""
    import torch

    from atflrec.base_model.fetch import resolve_base_model
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.features.store import load_features
    from atflrec.model.artifact import save_artifact
    from atflrec.model.network import ModelConfig
    from atflrec.training.local import build_model

    paths = {"dataset": work / "data", "features": work / "features", "tiny": work / "model-tiny",
             "smollm2": work / "model-smollm2"}
    if not (paths["features"] / "manifest.json").is_file():
        synth = SynthConfig(users=40, items=catalogue, clip_seconds=2.0, interactions_per_user=(10, 20))
        generate(synth, paths["dataset"])
        build_feature_store(paths["dataset"], str(paths["features"]), FeatureConfig(n_mels=[N_MELS], clip_seconds=2.0))
    clips = list(load_features(str(paths["features"]), N_MELS).values())
    bases = {"smollm2": SMOLLM2, "tiny": str(work / "tiny-base")}
    if "tiny" in models and not (work / "tiny-base" / "config.json").is_file():
        tiny_llama(work / "tiny-base", resolve_base_model(SMOLLM2))
    for name in sorted(models):
        if not (paths[name] / "atflrec_model.json").is_file():
            config = ModelConfig(base_model=bases[name], encoder={"n_mels": N_MELS}, fusion={"strategy": "early"})
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


def prefix_vs_naive(paths: dict[str, Path], model_dir: Path, catalogue_size: int) -> dict[str, Any]:
    """Whole-catalogue scoring for one history (SmolLM2 unless --quick): shared prefix vs one prompt
    per candidate."""
    import pyarrow.parquet as pq
    import torch

    from atflrec.features.store import load_features
    from atflrec.model.artifact import load_artifact
    from atflrec.model.prefix import Query
    from atflrec.serving.scorer import AudioTokens
    from atflrec.training.local import make_collator, predict

    torch.set_num_threads(1)  # both paths alike; on a shared machine, multi-threaded small matmuls stall
    model = load_artifact(model_dir)
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
    return {"model": model_dir.name, "candidates": len(candidates), "history": len(history), "torch_threads": 1,
            "shared_prefix_s": round(shared_s, 3),
            "one_prompt_per_candidate_s": round(naive_s, 3), "max_abs_score_diff": float(np.abs(shared - naive).max()),
            "ratio": naive_s / shared_s}


# --- catalogue scale -------------------------------------------------------------------------------


def copy_ids(item_ids: Sequence[str], size: int) -> list[tuple[str, str]]:
    """(id, original id) of ``size`` items: the originals first, then copy 1 of each (``<id>~1``),
    copy 2, ..., the last copy cut short so the count is exact."""
    if not item_ids or size < len(item_ids):
        raise ValueError(f"cannot make {size} items from {len(item_ids)}: at least as many as the originals")
    count = len(item_ids)
    pairs = [(item_ids[n] if n < count else f"{item_ids[n % count]}~{n // count}", item_ids[n % count])
             for n in range(size)]
    if len({new for new, _ in pairs}) != size:
        raise ValueError("the copies' ids collide with the originals' (an original id ends in ~<number>)")
    return pairs


def expand_dataset(source: Path, pairs: Sequence[tuple[str, str]], out: Path) -> None:
    """A format-v1 dataset of the ``pairs``' items: each copy has its original's title, tags and
    audio file (hard-linked into ``out``, else copied); the interactions are the source's."""
    from atflrec.data.format import items_table, read_interactions, read_items, resolve_audio_path, write_dataset

    originals = {row["item_id"]: row for row in read_items(source).to_pylist()}
    rows = [originals[old] for _, old in pairs]
    items = items_table([new for new, _ in pairs], [r["title"] for r in rows], [r["tags"] for r in rows],
                        [r["audio_path"] for r in rows])
    write_dataset(out, items, read_interactions(source),
                  {"expanded_from": str(source), "items": len(pairs), "originals": len(originals)})
    for row in originals.values():
        target = out / row["audio_path"]
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(resolve_audio_path(source, row["audio_path"]), target)
        except OSError:  # another filesystem
            shutil.copy2(resolve_audio_path(source, row["audio_path"]), target)


def expand_store(source: str, pairs: Sequence[tuple[str, str]], out: str, part_rows: int = PART_ROWS) -> None:
    """A feature store whose row for each id holds its original's stored features (every Mel-bin
    count of ``source``), written with the store's own part writer and commit, ``part_rows`` items
    per part file; an original without stored features (quarantined) leaves its copies without them."""
    import pyarrow as pa

    from atflrec.features import store

    manifest = store.read_manifest(source)
    if manifest is None:
        raise store.StoreError(f"no feature store at {source!r}")
    index = {row["item_id"]: row for row in store.read_index(source, manifest).to_pylist()}
    stored = [(new, old) for new, old in pairs if old in index]
    run_id = f"expand-{len(pairs)}"
    parts = [f"part-{run_id}-{n:05d}.parquet" for n in range(-(-len(stored) // part_rows))]
    for n_mels in manifest["params"]["n_mels"]:
        table = store.read_feature_table(source, n_mels)
        frames = table.column("features").combine_chunks().to_numpy_ndarray()  # [items, frames, n_mels], padded
        row_of = {item: n for n, item in enumerate(table.column("item_id").to_pylist())}
        n_frames = table.column("n_frames").to_pylist()
        for number, part in enumerate(parts):
            chunk = stored[number * part_rows:(number + 1) * part_rows]
            rows = [row_of[old] for _, old in chunk]
            store.write_part(out, n_mels, part, [new for new, _ in chunk], [n_frames[r] for r in rows], frames[rows])
    new_index = pa.table({
        "item_id": [new for new, _ in stored], "audio_path": [index[old]["audio_path"] for _, old in stored],
        "sha256": [index[old]["sha256"] for _, old in stored],
        "part": [parts[n // part_rows] for n in range(len(stored))],
        "n_frames": [index[old]["n_frames"] for _, old in stored],
    }, schema=store.INDEX_SCHEMA)
    store.commit(out, {
        "store_version": store.STORE_VERSION, "params": manifest["params"], "param_hash": manifest["param_hash"],
        "index": f"index-{run_id}.parquet", "stored_items": len(stored), "quarantined_items": 0,
        "last_run": {"run_id": run_id, "expanded_from": source, "counts": {"inputs": len(pairs)}},
    }, new_index, store.QUARANTINE_SCHEMA.empty_table())


def expand_catalogue(dataset: Path, features: str, size: int, out: Path) -> tuple[Path, Path]:
    """The dataset and feature store of a ``size``-item catalogue under ``out`` (reused when an
    earlier run wrote one of that size): ``dataset``'s items, then copies of them under new ids."""
    from atflrec.data.format import METADATA_FILE, read_items
    from atflrec.features.store import MANIFEST_FILE

    data, store = out / "data", out / "features"
    written = data / METADATA_FILE
    if (store / MANIFEST_FILE).is_file() and written.is_file() and json.loads(written.read_text())["items"] == size:
        return data, store
    pairs = copy_ids(read_items(dataset).column("item_id").to_pylist(), size)
    expand_dataset(dataset, pairs, data)
    shutil.rmtree(store, ignore_errors=True)  # a store of another size, or one a crash left half-written
    expand_store(features, pairs, str(store))
    return data, store


def recommend_bodies(item_ids: Sequence[str], count: int, seed: int) -> list[dict[str, Any]]:
    """``/v1/recommend`` bodies: a seeded history of ``HISTORY`` catalogue items, k = ``K``."""
    rng = np.random.default_rng(seed)
    return [{"history": [{"item_id": item_ids[i], "liked": bool(rng.integers(2))}
                         for i in rng.choice(len(item_ids), size=HISTORY, replace=False)], "k": K}
            for _ in range(count)]


def build_index(args: Any, bodies: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The served catalogue and its retrieval index built (never loaded) and saved where the replica
    will load it, by the app's own ``catalogue_index``; then the retrieval stage alone, in process."""
    from atflrec.model.artifact import read_meta
    from atflrec.serving.app import retrieve_shortlist
    from atflrec.serving.catalogue import Catalogue
    from atflrec.serving.retrieval import catalogue_index, is_index_dir
    from atflrec.serving.schemas import RecommendRequest
    from atflrec.serving.scorer import audio_mels

    mels = audio_mels(read_meta(args.models[args.default_model]))
    start = time.perf_counter()
    catalogue = Catalogue.load(args.dataset, args.features, [mels] if mels else [], args.items_dir)
    load_s = time.perf_counter() - start
    if is_index_dir(Path(args.retrieval_index_dir)):  # an earlier run's: build, never load
        shutil.rmtree(args.retrieval_index_dir)
    start = time.perf_counter()
    index = catalogue_index(args.retrieval, catalogue, args.dataset, args.features, args.retrieval_index_dir)
    build_s = time.perf_counter() - start
    times = []
    for body in bodies:
        history = RecommendRequest.model_validate(body).history
        start = time.perf_counter()
        retrieve_shortlist(index, history, max(args.retrieval.rerank_candidates, K))
        times.append(time.perf_counter() - start)
    return {"catalogue_load_s": round(load_s, 3), "index_build_s": round(build_s, 3),
            "retrieve_p50_ms": round(float(np.percentile(np.array(times) * 1000, 50)), 3)}


def scale_level(base: dict[str, Path], model: Path, size: int, port: int, threads: int, requests: int,
                max_seconds: float) -> dict[str, Any]:
    """``POST /v1/recommend`` at c1 against the app serving a ``size``-item catalogue (one replica)."""
    import pyarrow.parquet as pq
    from ray import serve

    from atflrec.serving.app import make_app
    from atflrec.serving.config import ServeArgs

    root = base["work"] / f"scale-{size}"
    start = time.perf_counter()
    data, store = expand_catalogue(base["dataset"], str(base["features"]), size, root)
    expand_s = time.perf_counter() - start
    args = ServeArgs(models={"scale": str(model)}, dataset=str(data), features=str(store),
                     items_dir=str(root / "items")).resolved()
    item_ids = pq.read_table(data / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    bodies = recommend_bodies(item_ids, WARMUP + requests, seed=size)
    level: dict[str, Any] = {"items": size, "expand_s": round(expand_s, 3), **build_index(args, bodies[WARMUP:])}
    options = {"num_replicas": 1, "ray_actor_options": {
        "num_cpus": 1, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}}
    start = time.perf_counter()
    serve.run(make_app(args, options), name=f"{APP}-scale", route_prefix="/scale")
    level["deploy_s"] = round(time.perf_counter() - start, 3)
    try:
        url = f"http://127.0.0.1:{port}/scale/v1/recommend"
        level["warmup_errors"] = asyncio.run(run_level(url, bodies[:WARMUP], 1, max_seconds))["errors"]
        level.update(asyncio.run(run_level(url, bodies[WARMUP:], 1, max_seconds)))
    finally:
        serve.delete(f"{APP}-scale")
    print(f"  recommend {size:>7} items {level}", flush=True)
    return level


# --- quality of the two stages ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """A test user: the history a recommend request would carry, and the held-out items they liked."""

    user: str
    history: tuple[tuple[str, bool], ...]  # (item id, liked): liked ones first, as the sample lists them
    liked: frozenset[str]


def held_out_users(test_rows: Sequence[Mapping[str, Any]], count: int, seed: int) -> list[HeldOut]:
    """``count`` seeded users of the test split who liked at least one of their test items (fewer
    when fewer qualify). A user's test samples are their latest warm interactions, so the history
    is the earliest one's: a later sample's history holds the earlier test item."""
    by_user: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in test_rows:
        by_user[row["user_id"]].append(row)
    cases = []
    for user in sorted(by_user):
        rows = sorted(by_user[user], key=lambda r: r["timestamp"])  # stable: equal times keep file order
        history = tuple((i, True) for i in rows[0]["liked_ids"]) + tuple((i, False) for i in rows[0]["disliked_ids"])
        liked = frozenset(r["item_id"] for r in rows if r["label"] == 1) - {i for i, _ in history}
        if liked:
            cases.append(HeldOut(user, history, liked))
    picked = np.random.default_rng(seed).choice(len(cases), size=min(count, len(cases)), replace=False)
    return [cases[n] for n in sorted(picked)]


def stage_quality(cases: Sequence[HeldOut], full: Sequence[Sequence[str]], two_stage: Sequence[Sequence[str]],
                  shortlists: Sequence[Sequence[str]], candidates: int) -> dict[str, float | None]:
    """Mean NDCG@K of both rankings (best first, per case), their ratio (None when the full one is
    0), and the mean recall of the held-out liked items in the first ``candidates`` shortlisted."""
    from atflrec.metrics import ndcg_at_k, recall_at_k

    ndcg_full = float(np.mean([ndcg_at_k(r, c.liked, K) for r, c in zip(full, cases, strict=True)]))
    ndcg_two = float(np.mean([ndcg_at_k(r, c.liked, K) for r, c in zip(two_stage, cases, strict=True)]))
    recall = float(np.mean([recall_at_k(s, c.liked, candidates) for s, c in zip(shortlists, cases, strict=True)]))
    return {"two_stage_ndcg10": ndcg_two, "full_ndcg10": ndcg_full,
            "two_stage_ndcg10_vs_full": ndcg_two / ndcg_full if ndcg_full > 0 else None,
            "retrieval_recall_at_candidates": recall}


def quality_sources(model: Path, samples: Path | None, data: Path | None, features: str | None) -> dict[str, str]:
    """Where the quality part reads: the flags, else the samples and feature store the artifact
    records it was trained on, and the samples' source dataset; relative paths from this directory."""
    from atflrec.model.artifact import read_meta
    from atflrec.samples import META_FILE

    train = read_meta(model).get("train") or {}
    sources = {"samples": samples or train.get("samples"), "features": features or train.get("features")}
    if sources["samples"] is not None and data is None and (Path(sources["samples"]) / META_FILE).is_file():
        data = json.loads((Path(sources["samples"]) / META_FILE).read_text()).get("source")
    sources["data"] = data
    for name, path in sources.items():
        if path is None or not Path(path).exists():
            raise ValueError(f"--{name}: {path or 'not recorded in the artifact'} does not exist; name it")
    return {name: str(path) for name, path in sources.items()}


def quality(model: Path, sources: dict[str, str], users: int, seed: int, work: Path) -> dict[str, Any]:
    """Both rankings for each held-out user, through the app's own functions and the served scorer."""
    import torch

    from atflrec.model.artifact import read_meta
    from atflrec.samples import read_samples
    from atflrec.serving.app import build_query, retrieve_shortlist
    from atflrec.serving.catalogue import Catalogue
    from atflrec.serving.config import ServeArgs
    from atflrec.serving.retrieval import catalogue_index
    from atflrec.serving.schemas import HistoryEntry
    from atflrec.serving.scorer import ServedModel, audio_mels, top_k

    args = ServeArgs(models={"quality": str(model)}, dataset=sources["data"], features=sources["features"],
                     items_dir=str(work / "quality-items")).resolved()
    mels = audio_mels(read_meta(model))
    catalogue = Catalogue.load(args.dataset, args.features, [mels] if mels else [], args.items_dir)
    index = catalogue_index(args.retrieval, catalogue, args.dataset, args.features, args.retrieval_index_dir)
    served = ServedModel.load("quality", args.models["quality"], catalogue)
    cases = held_out_users(read_samples(sources["samples"], "test").to_pylist(), users, seed)
    if not cases:
        return {"skipped": f"no user of {sources['samples']}'s test split liked a held-out item"}
    candidates, rows = max(args.retrieval.rerank_candidates, K), args.batching.rows_per_pass
    full, two_stage, shortlists, diffs = [], [], [], []
    start = time.perf_counter()
    for case in cases:
        history = [HistoryEntry(item_id=item, liked=liked) for item, liked in case.history]
        shortlist = [item for item, _ in retrieve_shortlist(index, history, candidates)]
        reranked = served.score([build_query(catalogue, history, shortlist, "catalogue")], rows)[0]
        seen = {item for item, _ in case.history}
        everything = [item for item in catalogue.titles if item not in seen]
        scores = served.score([build_query(catalogue, history, everything, "catalogue")], rows)[0]
        full.append([item for item, _ in top_k(everything, scores, K)])
        two_stage.append([item for item, _ in top_k(shortlist, reranked, K)])
        shortlists.append(shortlist)
        position = {item: n for n, item in enumerate(everything)}  # the same item, scored in both rankings
        diffs.append(float(np.abs(reranked - scores[[position[i] for i in shortlist]]).max()))
        print(f"  quality user {case.user}: {len(case.liked)} held-out liked, "
              f"{len(case.liked & set(shortlist))} shortlisted", flush=True)
    return {**stage_quality(cases, full, two_stage, shortlists, candidates), "users": len(cases),
            "held_out_liked": sum(len(c.liked) for c in cases), "catalogue": len(catalogue),
            "rerank_candidates": candidates, "k": K, "seed": seed, "max_abs_score_diff": max(diffs, default=0.0),
            "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads(),
            "model": str(model), **sources}


# --- results ---------------------------------------------------------------------------------------


def figure(figures: Mapping[str, Any], key: str) -> Any:
    """A figure by dotted key (``recommend_p50_ms.100000``); None when it was not measured."""
    value: Any = figures
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def goals_met(figures: Mapping[str, Any]) -> dict[str, bool | None]:
    compare = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}
    return {key: None if figure(figures, key) is None else compare[op](figure(figures, key), goal)
            for key, (op, goal) in GOALS.items()}


def headline(load: dict[str, Any], direct: float, floor: float, recommend: dict[str, Any],
             scale: Mapping[int, dict[str, Any]], stages: Mapping[str, Any], errors: int) -> dict[str, Any]:
    """The figures the goals are about, rounded; quality figures None when that part was skipped."""
    c32 = {mode: load[mode]["c32"]["throughput_rps"] for mode in load}
    p50 = {str(size): level["p50_ms"] for size, level in sorted(scale.items())}
    figures = {
        "batched_vs_unbatched_c32": c32["batched"] / c32["unbatched"],
        "recommend_prefix_vs_naive": recommend["ratio"],
        "serve_overhead_ms_c1": load["unbatched"]["c1"]["p50_ms"] - direct,
        # Of serve_overhead_ms_c1, what is left beyond Serve's own HTTP + FastAPI path (an empty app).
        "serve_app_overhead_ms_c1": load["unbatched"]["c1"]["p50_ms"] - direct - floor,
        "recommend_p50_ms": p50,
        "recommend_100k_vs_1k": p50["100000"] / p50["1000"] if {"1000", "100000"} <= p50.keys() else None,
        **{key: stages.get(key) for key in ("two_stage_ndcg10_vs_full", "two_stage_ndcg10", "full_ndcg10",
                                            "retrieval_recall_at_candidates")},
        "errors": errors,
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def scale_summary(scale: Mapping[int, dict[str, Any]], model: str, threads: int) -> dict[str, Any]:
    smallest, largest = min(scale), max(scale)
    return {"levels": {str(size): level for size, level in sorted(scale.items())},
            "largest_vs_smallest": {"sizes": [smallest, largest],
                                    "ratio": round(scale[largest]["p50_ms"] / scale[smallest]["p50_ms"], 3)},
            "index_build_s": {str(size): level["index_build_s"] for size, level in sorted(scale.items())},
            "model": model, "replica_torch_threads": threads, "concurrency": 1,
            "request": f"POST /v1/recommend, {HISTORY}-item history, k {K}, app defaults (ServeArgs)",
            "catalogue": "the benchmark dataset's items, then copies under new ids sharing their stored features"}


def positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_SCALE_ITEMS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_SCALE_ITEMS}, got {value}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, help="data directory to create or reuse (default: a temporary one)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the tiny model wherever SmolLM2 would run, and small sizes (see QUICK)")
    parser.add_argument("--load-model", choices=["tiny", "smollm2"], default="tiny", help="model behind the load test")
    parser.add_argument("--catalogue", type=positive, default=64,
                        help="items of the benchmark dataset (the prefix comparison scores all but 10)")
    parser.add_argument("--requests", type=positive, help="requests per level at c32 (c8: half, c1: a quarter)")
    parser.add_argument("--batch-wait-s", type=float, default=0.02, help="batch_wait_timeout_s when batched")
    parser.add_argument("--repeats", type=positive, help="runs per mode and level; the best one is kept")
    parser.add_argument("--max-seconds", type=float, help="time bound of each load level and recommend size")
    parser.add_argument("--scale-sizes", type=positive, nargs="+",
                        help="catalogue sizes of the recommend test (each at least --catalogue)")
    parser.add_argument("--recommend-requests", type=positive, help="timed recommend requests per size")
    parser.add_argument("--recommend-threads", type=positive, default=2, help="torch threads of the recommend replica")
    parser.add_argument("--model", type=Path, help="trained artifact for the quality part (skipped without one)")
    parser.add_argument("--samples", type=Path, help="samples of the quality part (default: the artifact's)")
    parser.add_argument("--data", type=Path, help="dataset of the quality part (default: the samples' source)")
    parser.add_argument("--features", help="feature store of the quality part (default: the artifact's)")
    parser.add_argument("--quality-users", type=positive, help="held-out users of the quality part")
    parser.add_argument("--quality-seed", type=int, default=0, help="seed of the held-out users' draw")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0 < args.max_seconds <= 3600:
        parser.error(f"--max-seconds: expected more than 0 and at most 3600, got {args.max_seconds}")
    if min(args.scale_sizes) < args.catalogue:
        parser.error(f"--scale-sizes: each at least --catalogue ({args.catalogue}), got {min(args.scale_sizes)}")
    args.scale_sizes = sorted(set(args.scale_sizes))
    args.sources = None
    if args.model is not None:
        try:  # before the long parts: a wrong path fails now, not after them
            args.sources = quality_sources(args.model, args.samples, args.data, args.features)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
    return args


def main() -> None:
    args = parse_args()

    import pyarrow.parquet as pq
    import ray
    from ray import serve

    heavy = "tiny" if args.quick else "smollm2"  # the model of the prefix comparison and the recommend test
    per_level = {1: args.requests // 4, 8: args.requests // 2, 32: args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        paths = prepare(work, args.catalogue, {args.load_model, heavy})
        paths["load"], paths["work"] = paths[args.load_model], work
        item_ids = pq.read_table(paths["dataset"] / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
        bodies = requests_for(item_ids, max(per_level.values()), seed=0)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        load, errors = serve_levels(paths, work, port, args.batch_wait_s, bodies, per_level, args.max_seconds,
                                    args.repeats)
        floor = serve_floor_p50_ms(port, bodies, per_level[1], args.max_seconds)
        scale = {size: scale_level(paths, paths[heavy], size, port, args.recommend_threads, args.recommend_requests,
                                   args.max_seconds) for size in args.scale_sizes}
        errors += sum(level["errors"] + level["warmup_errors"] for level in scale.values())
        serve.shutdown()
        ray.shutdown()
        direct = direct_p50_ms(paths, bodies, 60)
        recommend = prefix_vs_naive(paths, paths[heavy], args.catalogue)
        if args.sources is None:
            stages: dict[str, Any] = {"skipped": "no --model given: the quality of the two stages needs a trained "
                                                 "artifact (e.g. runs/demo/model or a tune best/)"}
        else:
            stages = quality(args.model, args.sources, args.quality_users, args.quality_seed, work)

    figures = headline(load, direct, floor, recommend, scale, stages, errors)
    result = {
        **figures,
        "goals": {k: f"{op} {v}" for k, (op, v) in GOALS.items()},
        "goals_met": goals_met(figures),
        "load": load,
        "direct_p50_ms_c1": round(direct, 2),
        "batched_overhead_ms_c1": round(load["batched"]["c1"]["p50_ms"] - direct, 2),
        "serve_floor_p50_ms_c1": round(floor, 2),
        "recommend": recommend,
        "scale": scale_summary(scale, heavy, args.recommend_threads),
        "quality": stages,
        "setup": {"load_model": args.load_model, "replicas": 1, "replica_cpus": 1, "torch_threads": 1,
                  "batched": {"max_batch_size": 32, "batch_wait_timeout_s": args.batch_wait_s},
                  "request": "POST /v1/score, 5-item history, 8 candidates", "catalogue": args.catalogue,
                  "n_mels": N_MELS, "requests_per_level": per_level, "max_seconds_per_level": args.max_seconds,
                  "recommend_requests": args.recommend_requests, "quick": args.quick,
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
