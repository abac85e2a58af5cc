"""What a served application is given: the ``args`` of a Serve config, as one pydantic model.

``serve run serve/local.yaml`` hands ``applications[].args`` to :func:`atflrec.serving.app.build_app`,
which validates them as :class:`ServeArgs`; ``atflrec serve`` reads the same file with
:func:`load_serve_config`, applies command-line overrides to the args, and keeps the file's
deployment and HTTP options.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from atflrec.config import ConfigError, StrictModel, apply_overrides, build_config, read_yaml
from atflrec.serving.retrieval import RetrievalConfig

IMPORT_PATH = "atflrec.serving.app:build_app"
DEPLOYMENT = "Recommender"
APP_NAME = "atflrec"
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Limits(StrictModel):
    """Request limits; anything beyond them is refused with a 4xx naming the field."""

    max_history: int = Field(50, ge=1, description="most history entries one request may carry")
    max_candidates: int = Field(1000, ge=1, description="most candidates one /v1/score request may carry")
    max_k: int = Field(100, ge=1, description="largest k of /v1/recommend")
    max_audio_bytes: int = Field(10 * 2**20, ge=1, description="largest cold-start audio upload, in bytes (decoded)")
    max_audio_seconds: float = Field(
        600.0, gt=0, le=24 * 3600,  # = atflrec.features.audio.MAX_AUDIO_SECONDS (not imported: no torch here)
        description="longest cold-start audio, in seconds, as its header declares; refused (422) before decoding",
    )
    max_body_bytes: int = Field(
        16 * 2**20, ge=1024,
        description="largest request body, in bytes; a larger one is refused (413) before it is parsed "
                    "(a base64 upload of max_audio_bytes needs 4/3 of it plus the JSON around it)",
    )
    max_cold_items: int = Field(
        10_000, ge=0, description="most cold-start items items_dir may hold; a further upload is refused (403)",
    )


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_REQUEST_TIMEOUT_S = 60.0  # http_options.request_timeout_s when a config sets none


class Auth(StrictModel):
    """Bearer-token authentication of the HTTP API (``Authorization: Bearer <token>``).

    The token is read by each replica from ``token_file`` if set, else from the environment variable
    ``token_env``. ``/healthz``, ``/docs`` and ``/openapi.json`` are always open."""

    token_env: str | None = Field("ATFLREC_API_TOKEN", description="environment variable holding the token")
    token_file: str | None = Field(None, description="file holding the token (a mounted Kubernetes secret)")
    scope: Literal["all", "writes"] = Field(
        "all", description="all: every endpoint but the open ones needs the token; writes: only /v1/items",
    )
    required: bool | None = Field(
        None,
        description="true: a replica without a token refuses to start; false: serve without one (explicitly "
                    "unauthenticated); unset: `atflrec serve` requires one when http_options.host is not loopback",
    )

    def token(self) -> str | None:
        """The configured token (None: none configured); an unreadable or empty token file is an error."""
        import os

        if self.token_file:
            try:
                token = Path(self.token_file).expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"auth.token_file: cannot read {self.token_file!r}: {exc.strerror}") from None
            if not token:
                raise ConfigError(f"auth.token_file: {self.token_file!r} is empty")
            return token
        return (os.environ.get(self.token_env) or "").strip() or None if self.token_env else None


class Batching(StrictModel):
    max_batch_size: int = Field(8, ge=1, description="requests per batched model call (1: no batching)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a batch waits to fill")
    rows_per_pass: int = Field(32, ge=1, description="candidate suffixes per forward pass")
    on_event_loop: bool = Field(
        False,
        description="run the model on the replica's event loop (faster batching on CPU, but /healthz and every "
                    "other request wait behind a batch); default: in a worker thread",
    )


class ServeArgs(StrictModel):
    """``args`` of the atflrec application in a Serve config."""

    models: dict[str, str] = Field(
        ..., min_length=1,
        description="model id -> artifact directory; the first serves requests without a "
                    "serve_multiplexed_model_id header",
    )
    dataset: str = Field(..., description="dataset directory whose items.parquet is the catalogue")
    features: str = Field(..., description="feature store of the dataset's audio (path or URI)")
    items_dir: str = Field(
        "runs/serve/items",
        description="where cold-start items are kept; every replica reads it (shared storage on a cluster)",
    )
    base_model: str | None = Field(None, description="override the artifacts' base-model reference")
    device: str = Field("auto", description="torch device; auto picks cuda when the replica has a GPU")
    limits: Limits = Field(default_factory=Limits, description="request limits")
    batching: Batching = Field(default_factory=Batching, description="request batching")
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig,
        description="the retrieval stage of /v1/recommend (the LLM re-ranks its shortlist)")
    index_dir: str | None = Field(
        None, description="where the retrieval index is kept (built at the first start); unset: <items_dir>.index")
    auth: Auth = Field(default_factory=Auth, description="bearer-token authentication")

    @field_validator("models")
    @classmethod
    def _ids(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not MODEL_ID.fullmatch(k)]
        if bad:
            raise ValueError(f"model ids must match {MODEL_ID.pattern}; got {bad}")
        return value

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    @property
    def retrieval_index_dir(self) -> str:
        return self.index_dir or f"{self.items_dir.rstrip('/')}.index"

    def resolved(self) -> ServeArgs:
        """Local paths made absolute, so every replica reads the same files whatever its directory."""
        from atflrec.storage import absolute_uri

        local = lambda p: str(Path(p).expanduser().resolve())  # noqa: E731
        return self.model_copy(update={
            "models": {k: local(v) for k, v in self.models.items()},
            "dataset": local(self.dataset), "features": absolute_uri(self.features),
            "items_dir": local(self.items_dir),
            "index_dir": local(self.retrieval_index_dir),
            "auth": self.auth.model_copy(update={"token_file": local(self.auth.token_file)})
            if self.auth.token_file else self.auth,
        })


@dataclass
class ServeLaunch:
    """One application of a Serve config, ready for ``serve.start`` + ``serve.run``."""

    args: ServeArgs
    name: str = APP_NAME
    route_prefix: str = "/"
    deployment_options: dict[str, Any] = field(default_factory=dict)
    http_options: dict[str, Any] = field(default_factory=dict)
    proxy_location: str | None = None


def load_serve_config(path: str | Path | None, overrides: Iterable[str] = ()) -> ServeLaunch:
    """The atflrec application of a standard Serve config file, its args overridden with
    dotted ``key=value`` pairs (e.g. ``models.best=runs/best``, ``limits.max_k=20``).
    Without a file: the args come from the overrides alone, with default deployment options."""
    from ray.serve.schema import ServeDeploySchema

    source = str(path) if path is not None else "defaults"
    default = {"applications": [{"name": APP_NAME, "import_path": IMPORT_PATH}]}
    data = read_yaml(path) if path is not None else default
    try:
        schema = ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not a valid Serve config:\n{exc}") from None
    apps = [a for a in schema.applications if a.import_path == IMPORT_PATH]
    if len(apps) != 1:
        raise ConfigError(f"{source}: expected one application with import_path {IMPORT_PATH}, found {len(apps)}")
    app = apps[0]
    args = build_config(ServeArgs, apply_overrides(app.args or {}, overrides), f"{source}: applications[].args")
    options: dict[str, Any] = {}
    for deployment in app.deployments:
        if deployment.name != DEPLOYMENT:
            raise ConfigError(f"{source}: unknown deployment {deployment.name!r}; the application has {DEPLOYMENT!r}")
        options = deployment.model_dump(exclude_unset=True, exclude={"name"})
    http = schema.http_options.model_dump(exclude_unset=True) if "http_options" in data else {}
    http.setdefault("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S)  # never wait on a request forever
    proxy = data.get("proxy_location")
    return ServeLaunch(require_auth(args, http.get("host", "127.0.0.1"), source), app.name, app.route_prefix or "/",
                       options, http, proxy)


def require_auth(args: ServeArgs, host: str, source: str = "serve config") -> ServeArgs:
    """Resolve ``auth.required`` for a bind address: unset means required beyond loopback. A
    required token must be readable here (a missing one fails before deploying)."""
    required = args.auth.required
    if required is None:
        required = host not in LOOPBACK_HOSTS
    if required and args.auth.token() is None:
        where = f"the file {args.auth.token_file}" if args.auth.token_file else f"${args.auth.token_env}"
        raise ConfigError(
            f"{source}: http_options.host {host!r} is reachable beyond this machine and no API token is set "
            f"(put one in {where}, or set auth.required=false to serve unauthenticated on purpose)")
    return args.model_copy(update={"auth": args.auth.model_copy(update={"required": required})})
