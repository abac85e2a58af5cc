"""Hostile-input benchmark (#18): a live ``atflrec serve`` on 127.0.0.1 takes at least 40 hostile
requests and must answer every one with a 4xx (never a 5xx), stay healthy, still recommend
correctly, and keep its replica's memory bounded.

    python bench/badinput.py --out bench/results/badinput.json

Builds a tiny dataset, an 8-bin feature store and a tiny random model (no download) in a temporary
directory (or ``--work DIR``), writes a Serve config with a token, a 1 MiB body limit, a quota of
3 cold items and a bounded queue, and starts ``atflrec serve --config`` as a child process (its own
local Ray) with the token in ``ATFLREC_API_TOKEN``. Then it sends the cases of :func:`cases`:
missing and wrong tokens, oversize bodies (with and without Content-Length), malformed and deeply
nested JSON, wrong types, limits exceeded, unknown and enormous ids, audio bombs (a FLAC declaring
10 hours, 100 Hz audio, silence, bytes that are not audio, bad base64), uploads past the quota,
deletes of dataset or unknown items, unknown models, paths and methods, invalid UTF-8, a corrupt
file dropped into ``items_dir``, and a burst within the queue. Requests go only to 127.0.0.1, one
at a time (the burst aside), each with a timeout, the whole run within ``--max-seconds``.

Afterwards: ``/healthz`` must answer ok and a normal ``/v1/recommend`` must return k catalogue items
with finite scores, best first. The replica's resident memory is sampled after every case
(psutil, the ``ServeReplica`` process under the child). Results: ``{"cases", "status_5xx",
"healthy_after", "recommend_ok_after", "max_rss_mb", ...}`` plus every case's status. Goals:
``status_5xx`` == 0, both checks true, replica RSS growth < 500 MB. Exit status 0 when all hold.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

N_MELS = 8
CLIP_SECONDS = 0.5
TOKEN = "badinput-bench-token"
HOST = "127.0.0.1"  # the only host this benchmark ever sends to
LIMITS = {"max_history": 10, "max_candidates": 50, "max_k": 20, "max_audio_bytes": 200_000,
          "max_body_bytes": 1 << 20, "max_cold_items": 3, "max_audio_seconds": 30}
RSS_GROWTH_GOAL_MB = 500.0


def prepare(work: Path) -> dict[str, Path]:
    """Dataset, feature store and a tiny model under ``work`` (reused when present)."""
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.features.pipeline import FeatureConfig, build_feature_store
    from atflrec.features.store import load_features
    from atflrec.model.artifact import save_artifact
    from atflrec.model.network import ModelConfig
    from atflrec.testing import build_tiny_base
    from atflrec.training.local import build_model

    paths = {"dataset": work / "data", "features": work / "features", "model": work / "model",
             "base": work / "tiny-base", "items": work / "items"}
    if not (paths["features"] / "manifest.json").is_file():
        generate(SynthConfig(users=8, items=20, clip_seconds=CLIP_SECONDS, interactions_per_user=(5, 8)),
                 paths["dataset"])
        build_feature_store(paths["dataset"], str(paths["features"]),
                            FeatureConfig(n_mels=[N_MELS], clip_seconds=CLIP_SECONDS))
    if not (paths["model"] / "atflrec_model.json").is_file():
        if not (paths["base"] / "config.json").is_file():
            build_tiny_base(paths["base"])
        config = ModelConfig(base_model=str(paths["base"]), encoder={"n_mels": N_MELS, "width": 16, "layers": 2},
                             lora={"r": 4, "alpha": 8, "dropout": 0.0}, fusion={"strategy": "early"})
        model = build_model(config, seed=0)
        model.encoder.fit_normalisation(list(load_features(str(paths["features"]), N_MELS).values()))
        save_artifact(model, paths["model"])
    paths["items"].mkdir(exist_ok=True)
    return paths


def serve_config(paths: dict[str, Path], port: int) -> dict[str, Any]:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": HOST, "port": port, "request_timeout_s": 60},
        "applications": [{
            "name": "atflrec", "route_prefix": "/", "import_path": "atflrec.serving.app:build_app",
            "args": {"models": {"tiny": str(paths["model"])}, "dataset": str(paths["dataset"]),
                     "features": str(paths["features"]), "items_dir": str(paths["items"]), "device": "cpu",
                     "limits": LIMITS, "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
                     "auth": {"token_env": "ATFLREC_API_TOKEN", "scope": "all", "required": True}},
            "deployments": [{"name": "Recommender", "num_replicas": 1, "max_ongoing_requests": 8,
                             "max_queued_requests": 32,
                             "backpressure_config": {"status_code": 503, "retry_after_s": 1},
                             "ray_actor_options": {"num_cpus": 1}}],
        }],
    }


# --- audio payloads ---------------------------------------------------------------------------

def wav(seconds: float = 0.4, rate: int = 16000, frequency: float = 440.0, silent: bool = False) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    samples = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * frequency * t)
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def flac_declaring(seconds: float) -> bytes:
    """A 0.4 s FLAC whose STREAMINFO claims ``seconds`` of audio."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, sf.read(io.BytesIO(wav()), dtype="float32")[0], 16000, format="FLAC")
    data = buffer.getvalue()
    bits = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1) | int(seconds * 16000)
    return data[:18] + bits.to_bytes(8, "big") + data[26:]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the cases --------------------------------------------------------------------------------

Case = tuple[str, str, str, dict[str, Any], set[int]]  # name, method, path, httpx kwargs, accepted statuses


def cases(ids: list[str]) -> list[Case]:
    """The hostile requests, each with the statuses that count as handled (all 4xx but the
    uploads that fill the quota, which must succeed for the quota case to mean anything). A body
    FastAPI cannot even decode (binary, invalid UTF-8, nesting past the parser's depth) is its 400."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    hist = [{"item_id": i, "liked": n % 2 == 0} for n, i in enumerate(ids[:3])]
    json_h = {**auth, "content-type": "application/json"}
    good_upload = lambda item: {"item_id": item, "title": f"Cold {item}", "audio": b64(wav(frequency=300 + len(item)))}  # noqa: E731

    def over_limit_chunks():
        for _ in range(24):
            yield b" " * 65536

    nested = b'{"history": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    out: list[Case] = [
        # authentication (finding 3)
        ("no token: recommend", "POST", "/v1/recommend", {"json": {"history": hist}}, {401}),
        ("no token: model", "GET", "/v1/model", {}, {401}),
        ("no token: upload", "POST", "/v1/items", {"json": good_upload("anon")}, {401}),
        ("no token: delete", "DELETE", "/v1/items/anything", {}, {401}),
        ("wrong token", "POST", "/v1/recommend", {"json": {"history": hist},
                                                  "headers": {"Authorization": "Bearer wrong"}}, {401}),
        ("basic auth", "GET", "/v1/model", {"headers": {"Authorization": "Basic " + b64(b"admin:admin")}}, {401}),
        ("token prefix only", "GET", "/v1/model", {"headers": {"Authorization": f"Bearer {TOKEN[:-1]}"}}, {401}),
        ("bare Bearer", "GET", "/v1/model", {"headers": {"Authorization": "Bearer"}}, {401}),
        # body size (finding 4)
        ("2 MiB body with Content-Length", "POST", "/v1/recommend",
         {"content": b'{"history": [' + b" " * (2 << 20) + b"]}", "headers": json_h}, {413}),
        ("1.5 MiB chunked body", "POST", "/v1/recommend", {"content": over_limit_chunks(), "headers": json_h}, {413}),
        ("JSON null body", "POST", "/v1/recommend", {"content": b"null", "headers": json_h}, {422}),
        # malformed input
        ("truncated JSON", "POST", "/v1/score", {"content": b'{"history": [', "headers": json_h}, {422}),
        ("not JSON", "POST", "/v1/recommend", {"content": b"\x00\x01 binary", "headers": json_h}, {400, 422}),
        ("invalid UTF-8", "POST", "/v1/recommend",
         {"content": b'{"history": "\xff\xfe"}', "headers": json_h}, {400, 422}),
        ("50k-deep nested arrays", "POST", "/v1/recommend", {"content": nested, "headers": json_h}, {400, 422}),
        ("text/plain body", "POST", "/v1/recommend",
         {"content": json.dumps({"history": hist}).encode(), "headers": {**auth, "content-type": "text/plain"}},
         {200, 415, 422}),
        ("empty body", "POST", "/v1/recommend", {"headers": json_h}, {422}),
        ("JSON array body", "POST", "/v1/recommend", {"json": [1, 2, 3], "headers": auth}, {422}),
        ("item id as number", "POST", "/v1/score", {"json": {"history": [{"item_id": 5, "liked": True}],
                                                             "candidates": [ids[0]]}, "headers": auth}, {422}),
        ("liked as string", "POST", "/v1/score", {"json": {"history": [{"item_id": ids[0], "liked": "yes"}],
                                                           "candidates": [ids[1]]}, "headers": auth}, {422}),
        ("unknown field", "POST", "/v1/recommend", {"json": {"history": hist, "admin": True}, "headers": auth}, {422}),
        ("k = 10^18", "POST", "/v1/recommend", {"json": {"history": hist, "k": 10**18}, "headers": auth}, {422}),
        ("k negative", "POST", "/v1/recommend", {"json": {"history": hist, "k": -1}, "headers": auth}, {422}),
        ("k float NaN", "POST", "/v1/recommend",
         {"content": b'{"history": ' + json.dumps(hist).encode() + b', "k": NaN}', "headers": json_h}, {422}),
        ("history over the limit", "POST", "/v1/recommend",
         {"json": {"history": [{"item_id": ids[0], "liked": True}] * 500}, "headers": auth}, {422}),
        ("10k unknown candidates", "POST", "/v1/score",
         {"json": {"history": hist, "candidates": [f"x{n}" for n in range(10_000)]}, "headers": auth}, {422}),
        ("100 KB unknown id", "POST", "/v1/score",
         {"json": {"history": hist, "candidates": ["z" * 100_000]}, "headers": auth}, {422}),
        ("control characters in ids", "POST", "/v1/score",
         {"json": {"history": hist, "candidates": ["\u0000\u202e<script>"]}, "headers": auth}, {422}),
        ("unknown model header", "POST", "/v1/recommend",
         {"json": {"history": hist}, "headers": {**auth, "serve_multiplexed_model_id": "nope"}}, {404}),
        ("8 KB model header", "GET", "/v1/model", {"headers": {**auth, "serve_multiplexed_model_id": "m" * 8000}},
         {400, 404, 431}),
        # uploads: audio bombs and bad ids (finding 2 at the door, finding 3's quota)
        ("audio not base64", "POST", "/v1/items",
         {"json": {"item_id": "b64", "title": "t", "audio": "%%%not base64%%%"}, "headers": auth}, {422}),
        ("bytes that are not audio", "POST", "/v1/items",
         {"json": {"item_id": "junk", "title": "t", "audio": b64(b"RIFF" + os.urandom(4000))}, "headers": auth}, {422}),
        ("FLAC declaring 10 hours", "POST", "/v1/items",
         {"json": {"item_id": "hours", "title": "t", "audio": b64(flac_declaring(36000)), "audio_format": "flac"},
          "headers": auth}, {422}),
        ("100 Hz audio", "POST", "/v1/items",
         {"json": {"item_id": "slow", "title": "t", "audio": b64(wav(2.0, rate=100, frequency=10))},
          "headers": auth}, {422}),
        ("silent audio", "POST", "/v1/items",
         {"json": {"item_id": "quiet", "title": "t", "audio": b64(wav(silent=True))}, "headers": auth}, {422}),
        ("audio over max_audio_bytes", "POST", "/v1/items",
         {"json": {"item_id": "big", "title": "t", "audio": b64(wav(8.0))}, "headers": auth}, {413}),
        ("path traversal id", "POST", "/v1/items",
         {"json": {"item_id": "../../etc/passwd", "title": "t", "audio": b64(wav())}, "headers": auth}, {422}),
        ("10k-character title", "POST", "/v1/items",
         {"json": {"item_id": "long-title", "title": "t" * 10_000, "audio": b64(wav())}, "headers": auth}, {422}),
        ("dataset id re-upload", "POST", "/v1/items",
         {"json": {"item_id": ids[0], "title": "t", "audio": b64(wav())}, "headers": auth}, {409}),
        ("mp3 format", "POST", "/v1/items",
         {"json": {"item_id": "mp3", "title": "t", "audio": b64(wav()), "audio_format": "mp3"}, "headers": auth},
         {422}),
    ]
    out += [(f"quota filler {n}", "POST", "/v1/items", {"json": good_upload(f"fill-{n}"), "headers": auth}, {201})
            for n in range(LIMITS["max_cold_items"])]
    out += [
        ("upload past the quota", "POST", "/v1/items", {"json": good_upload("one-too-many"), "headers": auth}, {403}),
        ("delete a dataset item", "DELETE", f"/v1/items/{ids[0]}", {"headers": auth}, {403}),
        ("delete an unknown item", "DELETE", "/v1/items/never-was", {"headers": auth}, {404}),
        ("delete by traversal", "DELETE", "/v1/items/..%2F..%2Fmanifest.json", {"headers": auth}, {404}),
        ("unknown path", "GET", "/v1/admin", {"headers": auth}, {404}),
        ("wrong method", "PUT", "/v1/recommend", {"json": {"history": hist}, "headers": auth}, {405}),
    ]
    return out


# --- running ----------------------------------------------------------------------------------

def replica_rss_mb(root_pid: int) -> float | None:
    """Resident memory of the Serve replica process(es) under the ``atflrec serve`` child, in MB."""
    import psutil

    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return None
    total = None
    for process in children:
        try:
            if any("ServeReplica" in part for part in process.cmdline()):
                total = (total or 0.0) + process.memory_info().rss / 1e6
        except psutil.Error:
            continue
    return total


def wait_healthy(client: Any, deadline: float, process: subprocess.Popen) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"atflrec serve exited with {process.returncode}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1.0)
    raise TimeoutError("atflrec serve did not become healthy in time")


def recommend_ok(client: Any, ids: list[str], catalogue: set[str]) -> bool:
    body = {"history": [{"item_id": i, "liked": n % 2 == 0} for n, i in enumerate(ids[:3])], "k": 5}
    response = client.post("/v1/recommend", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    if response.status_code != 200:
        return False
    items = response.json()["items"]
    scores = [i["score"] for i in items]
    return (len(items) == 5 and all(i["item_id"] in catalogue and i["item_id"] not in ids[:3] for i in items)
            and all(math.isfinite(s) and 0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True))


async def burst(url: str, ids: list[str], n: int) -> list[int]:
    """``n`` concurrent recommends, within max_ongoing + max_queued: all must be answered."""
    import httpx

    body = {"history": [{"item_id": i, "liked": True} for i in ids[3:6]], "k": 3}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        responses = await asyncio.gather(*[client.post("/v1/recommend", json=body) for _ in range(n)],
                                         return_exceptions=True)
    return [r.status_code if not isinstance(r, Exception) else -1 for r in responses]


def run(work: Path, max_seconds: float) -> dict[str, Any]:
    import httpx
    import pyarrow.parquet as pq
    import yaml

    started = time.monotonic()
    deadline = started + max_seconds
    paths = prepare(work)
    import ray

    if ray.is_initialized():
        ray.shutdown()  # the feature store's Ray: the server starts its own
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    config_path = work / "serve.yaml"
    config_path.write_text(yaml.safe_dump(serve_config(paths, port)))
    ids = sorted(pq.read_table(paths["dataset"] / "items.parquet").column("item_id").to_pylist())
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(ATFLREC_API_TOKEN=TOKEN, RAY_USAGE_STATS_ENABLED="0")
    log = open(work / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "atflrec.cli", "serve", "--config", str(config_path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{HOST}:{port}"
    results: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_healthy(client, min(deadline, time.monotonic() + 300), process)
            rss_before = replica_rss_mb(process.pid)
            rss_samples = [rss_before] if rss_before is not None else []
            for name, method, path, kwargs, accepted in cases(ids):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    status = client.request(method, path, **kwargs).status_code
                except httpx.HTTPError as exc:
                    status = -1
                    name += f" ({type(exc).__name__})"
                results.append({"case": name, "status": status, "expected": sorted(accepted),
                                "handled": status in accepted, "ms": round(1000 * (time.perf_counter() - t0), 1)})
                rss = replica_rss_mb(process.pid)
                if rss is not None:
                    rss_samples.append(rss)
            # A corrupt file in items_dir (finding 7): reported, never fatal.
            (paths["items"] / "corrupt.parquet").write_bytes(b"PAR1 not a parquet file")
            status = client.post("/v1/recommend", json={"history": [{"item_id": ids[0], "liked": True}]},
                                 headers={"Authorization": f"Bearer {TOKEN}"}).status_code
            results.append({"case": "corrupt file in items_dir, then recommend", "status": status, "expected": [200],
                            "handled": status == 200})
            codes = asyncio.run(burst(url, ids, 24))
            results.append({"case": "burst of 24 concurrent recommends", "status": max(codes),
                            "statuses": sorted(set(codes)), "expected": [200],
                            "handled": all(c == 200 for c in codes)})
            health = client.get("/healthz")
            healthy = health.status_code == 200 and health.json().get("status") == "ok"
            bad_reported = healthy and "corrupt.parquet" in health.json().get("bad_items", {})
            recommend_after = recommend_ok(client, ids, set(ids))
            rss_after = replica_rss_mb(process.pid)
            if rss_after is not None:
                rss_samples.append(rss_after)
    finally:
        process.send_signal(signal.SIGINT)  # atflrec serve deletes the app and stops its Ray
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the process group this benchmark started
            process.wait()
        log.close()
    statuses = [r["status"] for r in results]
    return {
        "cases": len(results),
        "status_5xx": sum(1 for s in statuses if 500 <= s < 600),
        "transport_errors": sum(1 for s in statuses if s < 0),
        "unexpected": [r for r in results if not r["handled"]],
        "healthy_after": healthy,
        "bad_items_reported": bad_reported,
        "recommend_ok_after": recommend_after,
        "max_rss_mb": round(max(rss_samples), 1) if rss_samples else None,
        "rss_before_mb": round(rss_before, 1) if rss_before is not None else None,
        "rss_growth_mb": round(max(rss_samples) - rss_before, 1) if rss_samples and rss_before is not None else None,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/badinput.json")
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atflrec-badinput-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = run(work, args.max_seconds)
    summary = {**{k: v for k, v in summary.items() if k != "results"},
               "goals": {"status_5xx": "== 0", "healthy_after": "true", "recommend_ok_after": "true",
                         "rss_growth_mb": f"< {RSS_GROWTH_GOAL_MB:g}"},
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "results": summary["results"]}
    met = (summary["status_5xx"] == 0 and summary["healthy_after"] and summary["recommend_ok_after"]
           and summary["cases"] >= 40 and (summary["rss_growth_mb"] or 0) < RSS_GROWTH_GOAL_MB)
    summary["goals_met"] = bool(met)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from atflrec.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("cases", "status_5xx", "healthy_after", "recommend_ok_after",
                                              "max_rss_mb", "rss_growth_mb", "goals_met")}))
    for r in summary["unexpected"]:
        print(f"unexpected: {r['case']}: {r['status']} (expected {r['expected']})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
