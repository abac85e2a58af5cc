"""The Ray Serve application: one ``Recommender`` deployment behind a FastAPI ingress.

- ``GET /healthz``, ``GET /v1/model``, ``POST /v1/score``, ``POST /v1/recommend``, ``POST /v1/items``;
  the OpenAPI schema at ``/openapi.json`` and ``/docs``.
- Model calls of concurrent requests are batched (``@serve.batch``): the queries of one batch run
  their prompt prefixes together and share forward passes over candidate suffixes
  (:mod:`atflrec.model.prefix`).
- Several models are served side by side (``@serve.multiplexed``): the request header
  ``serve_multiplexed_model_id`` names one of ``args.models``; without it the first one answers.
  Serve routes a header's requests to replicas that already hold that model, and splits batches by it.
- Bad input never reaches the model: every problem is a 4xx whose body names the field.
- Hardening (#18): an optional bearer token (``args.auth``; required beyond loopback), a request
  body limit (413, before parsing), a bounded queue per caller (``max_queued_requests``: 503 with
  ``Retry-After``), the model in a worker thread (``/healthz`` answers during a batch), a
  ``check_health`` that fails when the catalogue or a model cannot be read, no absolute paths in
  ``/v1/model``, a quota of cold items and ``DELETE /v1/items/{id}``; a bad file in ``items_dir``
  is skipped and reported by ``/healthz``, never fatal.

``build_app`` is the ``import_path`` of the Serve configs in ``serve/``. (No ``from __future__
import annotations`` here: FastAPI must see the endpoint types themselves in the replicas.)
"""

import asyncio
import base64
import binascii
import hmac
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from atflrec.config import build_config
from atflrec.features.audio import BadAudio
from atflrec.model.prefix import Query
from atflrec.serving.catalogue import Catalogue, ItemExists, NotColdItem
from atflrec.serving.config import DEPLOYMENT, ServeArgs
from atflrec.serving.metrics import ServingMetrics
from atflrec.serving.retrieval import ItemIndex, catalogue_index, sync
from atflrec.serving.schemas import (
    DeletedItem,
    ErrorResponse,
    FieldError,
    Health,
    HistoryEntry,
    ItemRequest,
    ItemResponse,
    ModelInfo,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
    ScoreRequest,
    ScoreResponse,
)
from atflrec.serving.scorer import ServedModel, audio_mels, describe, top_k

MODEL_HEADER = "serve_multiplexed_model_id"
MAX_MODELS_PER_REPLICA = 3  # models one replica keeps loaded (least recently used leave first)
MAX_QUEUED_REQUESTS = 64  # per caller (proxy or handle); beyond it: 503 with Retry-After
RETRY_AFTER_S = 1
OPEN_PATHS = ("/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
ECHO_CHARS = 64  # an unknown id is echoed back at most this long

api = FastAPI(
    title="atflrec", version="1",
    description="ATFLRec recommendations: P(Yes) scores for candidates, top-k items, cold-start items from audio.",
)


class RequestError(Exception):
    """Bad input found past schema validation: an HTTP status and the field it concerns."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message


def _error(status: int, problems: Sequence[tuple[str, str]]) -> JSONResponse:
    body = ErrorResponse(error="\n".join(f"{f}: {m}" for f, m in problems),
                         fields=[FieldError(field=f, message=m) for f, m in problems])
    return JSONResponse(status_code=status, content=body.model_dump())


class Guard:
    """ASGI middleware in front of every endpoint: the bearer token (401 before the body is read) and
    the body limit (413 from Content-Length, or while reading a body without one). Configured per
    replica process by :class:`Recommender` (``Guard.settings``); inert until then."""

    settings: tuple[str | None, str, int] | None = None  # (token, scope, max_body_bytes)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or Guard.settings is None:
            return await self.app(scope, receive, send)
        token, auth_scope, max_body = Guard.settings
        path = scope.get("path", "").rstrip("/") or "/"
        root = scope.get("root_path", "").rstrip("/")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if token is not None and path not in OPEN_PATHS and (auth_scope == "all" or path.startswith("/v1/items")):
            given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            kind, _, value = given.partition(" ")
            if kind.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                response = _error(401, [("authorization",
                                          "a valid 'Authorization: Bearer <token>' header is required")])
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > max_body
            except ValueError:
                return await _error(400, [("content-length", "not an integer")])(scope, receive, send)
            if too_big:
                return await _too_large(max_body)(scope, receive, send)
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): read the body here, bounded, and replay it.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > max_body:
                return await _too_large(max_body)(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    return _error(413, [("body", f"larger than limits.max_body_bytes = {limit} bytes")])


api.add_middleware(Guard)


def _echo(item: str) -> str:
    return item if len(item) <= ECHO_CHARS else item[:ECHO_CHARS] + f"... ({len(item)} characters)"


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if error["type"] == "json_invalid":
            problems.append(("body", f"malformed JSON: {error.get('ctx', {}).get('error', error['msg'])}"))
            continue
        field = ".".join(loc[1:] if len(loc) > 1 and loc[0] == "body" else loc)
        problems.append((field, "unknown field" if error["type"] == "extra_forbidden" else error["msg"]))
    return _error(422, problems)


@api.exception_handler(RequestError)
async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, [(exc.field, exc.message)])


def build_query(catalogue: Catalogue, history: Sequence[HistoryEntry], candidates: Sequence[str], field: str) -> Query:
    """A scoring query from a history (oldest first) and candidate ids, all in the catalogue."""
    unknown = [(f"history.{n}.item_id", h.item_id) for n, h in enumerate(history) if h.item_id not in catalogue]
    unknown += [(f"{field}.{n}", item) for n, item in enumerate(candidates) if item not in catalogue]
    if unknown:
        where, item = unknown[0]
        more = f" (and {len(unknown) - 1} more unknown ids)" if len(unknown) > 1 else ""
        raise RequestError(422, where, f"unknown item {_echo(item)!r}{more}")
    liked = [h.item_id for h in history if h.liked]
    disliked = [h.item_id for h in history if not h.liked]
    titles = catalogue.titles
    return Query(
        history={"liked_ids": liked, "liked_titles": [titles[i] for i in liked],
                 "disliked_ids": disliked, "disliked_titles": [titles[i] for i in disliked]},
        targets=[(item, titles[item]) for item in candidates],
    )


def retrieve_shortlist(index: ItemIndex, history: Sequence[HistoryEntry], n: int) -> list[tuple[str, float]]:
    """The retrieval stage of ``/v1/recommend``: the ``n`` items the index ranks best for the history
    (best first, with their retrieval scores), none of them in the history."""
    return index.retrieve([h.item_id for h in history if h.liked], [h.item_id for h in history if not h.liked],
                          n, exclude=[h.item_id for h in history])


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=32, health_check_period_s=10,
                  max_queued_requests=MAX_QUEUED_REQUESTS,
                  backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S))
@serve.ingress(api)
class Recommender:
    def __init__(self, args: dict[str, Any]) -> None:
        from atflrec.model.artifact import read_meta

        self.args = ServeArgs.model_validate(args)
        token = self.args.auth.token()
        if token is None and self.args.auth.required:
            raise RuntimeError("auth.required: no API token in this replica "
                               f"(auth.token_file={self.args.auth.token_file!r}, ${self.args.auth.token_env} unset)")
        Guard.settings = (token, self.args.auth.scope, self.args.limits.max_body_bytes)
        self.metas = {model_id: read_meta(path) for model_id, path in self.args.models.items()}
        mels = {n for n in map(audio_mels, self.metas.values()) if n is not None}
        self.catalogue = Catalogue.load(self.args.dataset, self.args.features, mels, self.args.items_dir)
        self.index = catalogue_index(self.args.retrieval, self.catalogue, self.args.dataset, self.args.features,
                                     self.args.retrieval_index_dir)
        self.batches = self.queries = 0  # model calls and the requests they served (batching at work)
        self.metrics = ServingMetrics()
        # The default model loads with the replica, so a ready replica answers without a cold start.
        self._preloaded = {self.args.default_model: self._load(self.args.default_model)}
        self._score_batch.set_max_batch_size(self.args.batching.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.args.batching.batch_wait_timeout_s)

    def _load(self, model_id: str) -> ServedModel:
        return ServedModel.load(model_id, self.args.models[model_id], self.catalogue, self.args.base_model,
                                self.args.device)

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> ServedModel:
        preloaded = self._preloaded.pop(model_id, None)
        return preloaded if preloaded is not None else await asyncio.to_thread(self._load, model_id)

    def _model_id(self) -> str:
        model_id = serve.get_multiplexed_model_id() or self.args.default_model
        if model_id not in self.args.models:
            raise RequestError(404, MODEL_HEADER, f"unknown model {model_id!r}; served: {', '.join(self.args.models)}")
        return model_id

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _score_batch(self, calls: list[tuple[ServedModel, Query]]) -> list[np.ndarray]:
        # Serve splits batches by multiplexed model id, so every call of a batch names one model.
        # By default the model runs in a worker thread, so /healthz, health checks and bad input
        # are answered while a batch runs (#18 finding 4). On the event loop (batching.on_event_loop)
        # batches filled better on CPU (the Python-heavy forward holds the GIL; measured before:
        # about twice the throughput), at the price of everything else waiting behind a batch.
        served = calls[0][0]
        self.batches, self.queries = self.batches + 1, self.queries + len(calls)
        self.metrics.batch_queries.observe(len(calls))
        queries, rows = [query for _, query in calls], self.args.batching.rows_per_pass
        if self.args.batching.on_event_loop:
            return served.score(queries, rows)
        return await asyncio.to_thread(served.score, queries, rows)

    async def check_health(self) -> None:
        """Serve's periodic replica check: fails (and the replica is replaced) when a model artifact,
        the dataset's items or the items directory cannot be read any more."""
        await asyncio.to_thread(self._check_readable)

    def _check_readable(self) -> None:
        from atflrec.model.artifact import read_meta

        for model_id, path in self.args.models.items():
            try:
                read_meta(path)
            except Exception as exc:  # noqa: BLE001 - any failure is an unhealthy replica
                raise RuntimeError(f"model {model_id!r} cannot be read: {exc}") from None
        items = os.path.join(self.args.dataset, "items.parquet")
        if not os.access(items, os.R_OK):
            raise RuntimeError(f"the catalogue {items} cannot be read")
        if os.path.exists(self.args.items_dir) and not os.access(self.args.items_dir, os.R_OK | os.X_OK):
            raise RuntimeError(f"items_dir {self.args.items_dir} cannot be read")

    def _count_scored(self, endpoint: str, query: Query) -> None:
        self.metrics.prefixes.inc(1, tags={"endpoint": endpoint})
        self.metrics.scored.inc(len(query.targets), tags={"endpoint": endpoint})

    def _check_history(self, history: Sequence[HistoryEntry]) -> None:
        if len(history) > self.args.limits.max_history:
            raise RequestError(422, "history", f"{len(history)} entries; at most {self.args.limits.max_history}")

    # --- endpoints ------------------------------------------------------------------------

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        context = serve.get_replica_context()
        self.catalogue.refresh()
        return Health(status="ok", replica=context.replica_id.unique_id, items=len(self.catalogue),
                      cold_items=self.catalogue.cold_items, models=list(self.args.models),
                      batches=self.batches, queries=self.queries, bad_items=dict(self.catalogue.bad_items))

    @api.get("/v1/model", response_model=ModelInfo, responses={404: {"model": ErrorResponse}})
    async def model_info(self) -> ModelInfo:
        model_id = self._model_id()
        return ModelInfo(
            **describe(model_id, self.args.models[model_id], self.metas[model_id], public=True),
            served_models=list(self.args.models), default_model=self.args.default_model,
            limits=self.args.limits.model_dump(), catalogue_size=len(self.catalogue),
        )

    @api.post("/v1/score", response_model=ScoreResponse, responses={422: {"model": ErrorResponse}})
    async def score(self, body: ScoreRequest) -> ScoreResponse:
        model_id = self._model_id()
        self._check_history(body.history)
        if len(body.candidates) > self.args.limits.max_candidates:
            raise RequestError(422, "candidates",
                               f"{len(body.candidates)} candidates; at most {self.args.limits.max_candidates}")
        self.catalogue.refresh()
        query = build_query(self.catalogue, body.history, body.candidates, "candidates")
        served = await self.get_model(model_id)
        with self.metrics.timed("score"):
            scores = await self._score_batch((served, query))
        self._count_scored("score", query)
        return ScoreResponse(model=served.model_id, scores=[
            ScoredItem(item_id=item, title=title, score=float(s)) for (item, title), s in zip(query.targets, scores)
        ])

    @api.post("/v1/recommend", response_model=RecommendResponse, responses={422: {"model": ErrorResponse}})
    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        model_id = self._model_id()
        self._check_history(body.history)
        if body.k > self.args.limits.max_k:
            raise RequestError(422, "k", f"{body.k} is more than limits.max_k = {self.args.limits.max_k}")
        self.catalogue.refresh()
        sync(self.index, self.catalogue)
        build_query(self.catalogue, body.history, [], "catalogue")  # unknown history ids: a 422 before any work
        with self.metrics.timed("retrieval"):
            shortlist = retrieve_shortlist(self.index, body.history, max(self.args.retrieval.rerank_candidates, body.k))
        self.metrics.retrieved.inc(len(shortlist))
        if not shortlist:
            raise RequestError(422, "history", "the history covers the whole catalogue; nothing is left to recommend")
        candidates = [item for item, _ in shortlist]
        query = build_query(self.catalogue, body.history, candidates, "catalogue")
        served = await self.get_model(model_id)
        with self.metrics.timed("rerank"):
            scores = await self._score_batch((served, query))
        self._count_scored("recommend", query)
        retrieval = {item: (rank, score) for rank, (item, score) in enumerate(shortlist, 1)}
        return RecommendResponse(model=served.model_id, retrieved=len(shortlist), catalogue_size=len(self.catalogue),
                                 items=[
            RecommendedItem(item_id=item, title=self.catalogue.titles[item], score=s,
                            retrieval_score=retrieval[item][1], retrieval_rank=retrieval[item][0])
            for item, s in top_k(candidates, scores, body.k)
        ])

    @api.post("/v1/items", status_code=201, response_model=ItemResponse,
              responses={409: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def add_item(self, body: ItemRequest) -> ItemResponse:
        limit = self.args.limits.max_audio_bytes
        if len(body.audio) > 4 * -(-limit // 3):  # base64 length of `limit` bytes: refuse before decoding
            raise RequestError(413, "audio", f"more than limits.max_audio_bytes = {limit} bytes")
        try:
            audio = base64.b64decode(body.audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(422, "audio", f"not valid base64 ({exc})") from None
        if len(audio) > limit:
            raise RequestError(413, "audio", f"{len(audio)} bytes; at most limits.max_audio_bytes = {limit}")
        self.catalogue.refresh()
        if body.item_id in self.catalogue:
            raise RequestError(409, "item_id", f"item {body.item_id!r} is already in the catalogue")
        if self.catalogue.cold_items >= self.args.limits.max_cold_items:
            raise RequestError(403, "item_id", f"the catalogue holds limits.max_cold_items = "
                                               f"{self.args.limits.max_cold_items} cold items; delete some first")
        try:
            features = await asyncio.to_thread(self.catalogue.featurise, audio, "." + body.audio_format,
                                               self.args.limits.max_audio_seconds)
        except BadAudio as exc:
            raise RequestError(422, "audio",
                               f"cannot use this {body.audio_format} audio: {exc.reason} ({exc.detail})") from None
        except MemoryError:  # the audio bounds should make this unreachable; never a 500 if not
            raise RequestError(413, "audio", "decoding this audio needs more memory than the replica has") from None
        try:
            self.catalogue.add(body.item_id, body.title, body.tags, features)
        except ItemExists as exc:
            raise RequestError(409, "item_id", str(exc)) from None
        sync(self.index, self.catalogue)  # recommendable at once
        return ItemResponse(item_id=body.item_id, title=body.title, tags=body.tags,
                            n_frames=next(iter(features.values())).shape[0], catalogue_size=len(self.catalogue))

    @api.delete("/v1/items/{item_id}", response_model=DeletedItem,
                responses={403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def delete_item(self, item_id: str) -> DeletedItem:
        try:
            await asyncio.to_thread(self.catalogue.delete, item_id)
        except NotColdItem:
            if item_id in self.catalogue:
                raise RequestError(403, "item_id", f"{_echo(item_id)!r} is a dataset item; only cold-start "
                                                   "items can be deleted") from None
            raise RequestError(404, "item_id", f"no cold-start item {_echo(item_id)!r}") from None
        sync(self.index, self.catalogue)  # never retrieved again (other replicas hide it at their next refresh)
        return DeletedItem(item_id=item_id, catalogue_size=len(self.catalogue))


def check_args(args: ServeArgs) -> None:
    """Fail before deploying when an artifact, the dataset or the feature store cannot serve."""
    from atflrec.data.format import read_items
    from atflrec.features.store import StoreError, read_manifest
    from atflrec.model.artifact import read_meta

    metas = {model_id: read_meta(path) for model_id, path in args.models.items()}
    read_items(args.dataset)
    manifest = read_manifest(args.features)
    if manifest is None:
        raise StoreError(f"features: no feature store at {args.features!r} (run `atflrec features` first)")
    for model_id, meta in metas.items():
        n_mels = audio_mels(meta)
        if n_mels is not None and n_mels not in manifest["params"]["n_mels"]:
            raise StoreError(f"models.{model_id}: needs {n_mels}-bin features; "
                             f"the store has {manifest['params']['n_mels']}")


def make_app(args: ServeArgs, deployment_options: dict[str, Any] | None = None) -> Application:
    """The application for ``args`` (paths made absolute, checked), with optional deployment options."""
    args = args.resolved()
    check_args(args)
    if args.auth.required is None:
        import logging

        logging.getLogger(__name__).warning(
            "auth.required is unset: a token is used if %s is set, else the API is open. Set it in the "
            "Serve config when the HTTP port is reachable beyond loopback.",
            args.auth.token_file or f"${args.auth.token_env}")
    deployment = Recommender.options(**deployment_options) if deployment_options else Recommender
    return deployment.bind(args.model_dump(mode="json"))


def build_app(args: dict[str, Any]) -> Application:
    """Serve's app builder (``import_path: atflrec.serving.app:build_app``): validates ``args``;
    a bad key or path raises an error that names it."""
    return make_app(build_config(ServeArgs, args, "serve application args"))
