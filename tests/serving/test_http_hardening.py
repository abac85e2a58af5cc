"""#18 findings 3, 4 and 7 over real HTTP on 127.0.0.1: a bearer token, a body limit (413), a
bounded queue (503 with Retry-After), no absolute paths in /v1/model, a quota of cold items and
DELETE, unknown ids not echoed in full, and a corrupt items_dir file that breaks nothing."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from atflrec.serving.config import ServeArgs

APP = "atflrec-hardening-test"
PREFIX = "/h"
TOKEN = "s3cret-token-for-tests"
LIMITS = {"max_history": 6, "max_candidates": 10, "max_k": 50, "max_audio_bytes": 40_000,
          "max_body_bytes": 80_000, "max_cold_items": 1}


@pytest.fixture(scope="module")
def hardened(serve_port, serving_data, artifacts, tmp_path_factory) -> dict[str, Any]:
    from ray import serve

    from atflrec.serving.app import make_app

    root = tmp_path_factory.mktemp("hardened")
    (root / "token").write_text(TOKEN + "\n")
    items_dir = root / "items"
    items_dir.mkdir()
    args = ServeArgs(models={"early": str(artifacts["early"])}, dataset=str(serving_data["dataset"]),
                     features=str(serving_data["features"]), items_dir=str(items_dir), limits=LIMITS,
                     auth={"token_file": str(root / "token"), "required": True},
                     batching={"max_batch_size": 2, "batch_wait_timeout_s": 0.05, "rows_per_pass": 2})
    options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 2,
               "max_queued_requests": 1}
    serve.run(make_app(args, options), name=APP, route_prefix=PREFIX)
    url = f"http://127.0.0.1:{serve_port}{PREFIX}"
    ids = sorted(pq.read_table(serving_data["dataset"] / "items.parquet").column("item_id").to_pylist())
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client, \
            httpx.Client(base_url=url, timeout=120) as anonymous:
        yield {"client": client, "anonymous": anonymous, "url": url, "ids": ids, "items_dir": items_dir}
    serve.delete(APP)


def history_of(ids: list[str]) -> list[dict[str, Any]]:
    return [{"item_id": item, "liked": n % 2 == 0} for n, item in enumerate(ids)]


def wav_bytes(seconds: float = 0.4, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(int(seconds * rate)) / rate)).astype(np.float32),
             rate, format="WAV")
    return buffer.getvalue()


def upload(item_id: str) -> dict[str, Any]:
    return {"item_id": item_id, "title": f"Title {item_id}", "audio": base64.b64encode(wav_bytes()).decode()}


def test_a_token_is_needed_for_everything_but_health_and_docs(hardened) -> None:
    anonymous, ids = hardened["anonymous"], hardened["ids"]
    assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/openapi.json").status_code == 200
    for method, path, body in [("GET", "/v1/model", None), ("POST", "/v1/recommend", {"history": history_of(ids[:2])}),
                               ("POST", "/v1/items", upload("anon")), ("DELETE", "/v1/items/anon", None)]:
        response = anonymous.request(method, path, json=body)
        assert response.status_code == 401, (path, response.text)
        assert (response.headers["www-authenticate"] == "Bearer"
                and response.json()["fields"][0]["field"] == "authorization")
        wrong = anonymous.request(method, path, json=body, headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 401
    assert hardened["client"].post("/v1/recommend", json={"history": history_of(ids[:2]), "k": 3}).status_code == 200


def test_model_description_has_no_absolute_paths(hardened, artifacts) -> None:
    info = hardened["client"].get("/v1/model").json()
    assert info["artifact"] == Path(artifacts["early"]).name

    def strings(value: Any):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    assert not [s for s in strings(info) if s.startswith("/")]


def test_a_body_over_the_limit_is_413_with_or_without_content_length(hardened) -> None:
    client = hardened["client"]
    big = b'{"history": [' + b" " * 100_000 + b"]}"
    response = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["fields"][0]["field"] == "body"

    def chunks():
        for _ in range(20):
            yield b" " * 10_000

    chunked = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text


def test_unknown_ids_are_not_echoed_in_full(hardened) -> None:
    ids = hardened["ids"]
    response = hardened["client"].post("/v1/score", json={"history": history_of(ids[:1]), "candidates": ["x" * 5000]})
    assert response.status_code == 422 and len(response.text) < 500


def test_quota_and_delete_of_cold_items(hardened) -> None:
    client, ids = hardened["client"], hardened["ids"]
    assert client.post("/v1/items", json=upload("q1")).status_code == 201
    over = client.post("/v1/items", json=upload("q2"))
    assert over.status_code == 403 and "max_cold_items" in over.text
    assert client.delete(f"/v1/items/{ids[0]}").status_code == 403  # dataset items stay
    assert client.delete("/v1/items/nope").status_code == 404
    deleted = client.delete("/v1/items/q1")
    assert deleted.status_code == 200 and deleted.json()["item_id"] == "q1"
    assert client.post("/v1/score", json={"history": history_of(ids[:1]), "candidates": ["q1"]}).status_code == 422
    assert client.post("/v1/items", json=upload("q2")).status_code == 201
    assert client.delete("/v1/items/q2").status_code == 200


def test_a_corrupt_items_dir_file_is_reported_not_fatal(hardened) -> None:
    """Before: one unreadable file made every call 500 while /healthz stayed green."""
    client, ids = hardened["client"], hardened["ids"]
    (hardened["items_dir"] / "broken.parquet").write_bytes(b"PAR1 garbage")
    try:
        response = client.post("/v1/recommend", json={"history": history_of(ids[:2]), "k": 3})
        assert response.status_code == 200, response.text
        health = client.get("/healthz").json()
        assert "broken.parquet" in health["bad_items"]
    finally:
        (hardened["items_dir"] / "broken.parquet").unlink()


def test_a_full_queue_answers_503_with_retry_after(hardened) -> None:
    """max_queued_requests: beyond it the proxy answers 503 at once instead of queueing forever."""
    ids = hardened["ids"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hardened["url"], timeout=120,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            return await asyncio.gather(*[
                client.post("/v1/recommend", json={"history": history_of(ids[:3]), "k": 5}) for _ in range(16)])

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
    assert hardened["client"].get("/healthz").status_code == 200


def test_check_health_fails_when_a_model_or_the_catalogue_cannot_be_read(tmp_path, serving_data, artifacts) -> None:
    from types import SimpleNamespace

    from atflrec.serving.app import Recommender

    cls = Recommender.func_or_class
    replica = SimpleNamespace()  # the replica's own methods, without starting one
    replica._check_readable = lambda: cls._check_readable(replica)
    replica.check_health = lambda: cls.check_health(replica)
    replica.args = ServeArgs(models={"early": str(artifacts["early"])}, dataset=str(serving_data["dataset"]),
                             features=str(serving_data["features"]), items_dir=str(tmp_path))
    asyncio.run(replica.check_health())  # healthy
    replica.args = replica.args.model_copy(update={"models": {"gone": str(tmp_path / "gone")}})
    with pytest.raises(RuntimeError, match="model 'gone' cannot be read"):
        asyncio.run(replica.check_health())
    replica.args = replica.args.model_copy(update={"models": {"early": str(artifacts["early"])},
                                                   "dataset": str(tmp_path / "no-dataset")})
    with pytest.raises(RuntimeError, match="catalogue"):
        asyncio.run(replica.check_health())


def test_the_model_runs_off_the_event_loop() -> None:
    """#18 finding 4: a batch no longer blocks the replica's event loop (so /healthz, health checks
    and refusals are answered during it); batching.on_event_loop restores the old behaviour."""
    import time
    from types import SimpleNamespace

    import numpy as np

    from atflrec.serving.app import Recommender

    class SlowModel:
        def score(self, queries, rows_per_pass):
            time.sleep(0.5)  # a forward pass holding its thread
            return [np.zeros(1) for _ in queries]

    def ticks_during_a_batch(on_event_loop: bool) -> int:
        not_exported = SimpleNamespace(batch_queries=SimpleNamespace(observe=lambda n: None))  # no replica context
        replica = SimpleNamespace(batches=0, queries=0, metrics=not_exported, args=ServeArgs(
            models={"m": "/m"}, dataset="/d", features="/f", batching={"on_event_loop": on_event_loop}))
        score_batch = Recommender.func_or_class._score_batch.__wrapped__  # the method under @serve.batch

        async def main() -> int:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.02)
                    ticks += 1

            task = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            before = ticks
            await score_batch(replica, [(SlowModel(), "query")])
            task.cancel()
            return ticks - before

        return asyncio.run(main())

    assert ticks_during_a_batch(False) >= 10
    assert ticks_during_a_batch(True) == 0
