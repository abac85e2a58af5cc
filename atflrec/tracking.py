"""Experiment tracking with MLflow: every train, tune and evaluate run recorded where platform teams look.

Optional: ``tracking.enabled`` in a stage's config turns it on, and only then is ``mlflow`` imported
(``pip install 'atflrec[tracking]'``). ``tracking.uri`` is any MLflow tracking URI (a server,
``sqlite:///...``, ``databricks``...) or a directory for a local store (an SQLite database plus its
artifacts); unset, it is ``$MLFLOW_TRACKING_URI`` or ``./mlruns``. Credentials come only from the
environment (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``): a URI that holds
them is refused, so no credential reaches a param, a tag or an artifact's metadata.

Runs are addressed by id through ``MlflowClient``, never through MLflow's process-wide active run:
a Tune trial, a Ray Train controller and the search's driver each log to their own run, from their
own process, with a picklable :class:`RunRef`. A run carries an identity (``atflrec.identity``, a
hash of e.g. ``train:<storage>/<name>``), so ``--resume`` continues the run it started instead of
opening another.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from atflrec.config import SECRET_ERROR, ConfigError, StrictModel
from atflrec.console import say

INSTALL_HINT = "pip install 'atflrec[tracking]'"
DEFAULT_STORE = "mlruns"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
# Tags of our own; MLflow's reserved ones (mlflow.*) are used where the UI shows them.
KIND, IDENTITY, BASE_MODEL = "atflrec.kind", "atflrec.identity", "atflrec.base_model"
ARTIFACT_PATH = "atflrec.artifact_path"  # lineage: the exported artifact a run produced
PARENT, GIT_COMMIT, SOURCE = "mlflow.parentRunId", "mlflow.source.git.commit", "mlflow.source.name"
VERSIONED = ("atflrec", "ray", "torch", "transformers", "peft", "deepspeed", "mlflow")
# MLflow's limits: a param value's length, params and metrics per log_batch call.
MAX_PARAM_CHARS, BATCH = 6000, 100


class TrackingConfig(StrictModel):
    """Where a stage records its run (MLflow); off unless ``enabled``."""

    enabled: bool = Field(False, description="record the run in MLflow (needs pip install 'atflrec[tracking]')")
    uri: str | None = Field(
        None, description="MLflow tracking URI (http(s)://server, sqlite:///file.db, ...) or a directory for a local "
                          "store; unset: $MLFLOW_TRACKING_URI, else ./mlruns. Credentials only from the environment")
    experiment: str = Field("atflrec", min_length=1, description="MLflow experiment name (created when missing)")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        if uri is not None and "://" in uri:
            parsed = urlparse(uri)
            if parsed.username or parsed.password:
                raise PydanticCustomError(SECRET_ERROR, "holds credentials: set MLFLOW_TRACKING_USERNAME and "
                                          "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment")
        return uri


def resolve_uri(uri: str | None) -> str:
    """The tracking URI a config names: a URI (``scheme://...``, ``databricks``) as it is, a directory
    as a local SQLite store in it (made absolute, so Ray actors elsewhere use the same one)."""
    import os

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    if "://" in uri or uri.split(":", 1)[0] == "databricks":
        return uri
    return f"sqlite:///{Path(uri).expanduser().resolve() / DB_FILE}"


def local_store_dir(uri: str) -> Path | None:
    """The directory of a local SQLite store (artifacts go beside the database), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).parent


def ui_command(uri: str, port: int = 5000) -> str:
    """How to look at the runs: the server's address, or ``mlflow ui`` on a store."""
    import shlex

    if urlparse(uri).scheme in ("http", "https"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port {port}"


def require_mlflow() -> None:
    """Fail at once, naming the extra, when tracking is on but MLflow is not installed."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"tracking.enabled: MLflow is not installed; {INSTALL_HINT}")


def _mlflow_client(uri: str) -> Any:
    require_mlflow()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class RunRef:
    """Where a run lives; small and picklable, handed to Ray actors and written into artifacts."""

    uri: str
    experiment_id: str
    run_id: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def public_reference(meta: Mapping[str, Any] | None) -> dict[str, str] | None:
    """What a client may see of an artifact's run: its ids, and the URI only when it is a server's
    (a local store's URI is a path on the serving machine)."""
    if not meta:
        return None
    shown = {"run_id": meta["run_id"], "experiment_id": meta["experiment_id"]}
    if urlparse(meta["uri"]).scheme in ("http", "https", "databricks"):
        shown["uri"] = meta["uri"]
    return shown


class Run:
    """An MLflow run, or nothing at all when tracking is off (every method is then a no-op)."""

    def __init__(self, ref: RunRef | None = None, client: Any = None) -> None:
        self.ref, self.client = ref, client

    @classmethod
    def attach(cls, ref: RunRef) -> Run:
        """The run ``ref`` names, from another process."""
        return cls(ref, _mlflow_client(ref.uri))

    def __bool__(self) -> bool:
        return self.ref is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """``params`` flattened to dotted keys; keys already logged keep their value (a resumed run)."""
        if not self:
            return
        from mlflow.entities import Param

        logged = self.client.get_run(self.ref.run_id).data.params
        items = [Param(k, v) for k, v in flatten(params).items() if k not in logged]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.ref.run_id, params=items[start:start + BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """The finite numbers among ``metrics`` (flags and text are left out) at ``step``."""
        if not self:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in numeric(metrics).items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.ref.run_id, metrics=items[start:start + BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_PARAM_CHARS]) for k, v in tags.items() if v is not None]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.ref.run_id, tags=items[start:start + BATCH])

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self and Path(path).is_file():
            self.client.log_artifact(self.ref.run_id, str(path), artifact_path)

    def log_dir(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self and Path(path).is_dir():
            self.client.log_artifacts(self.ref.run_id, str(path), artifact_path)

    def log_model(self, artifact_dir: str | Path, artifact_path: str = "model") -> None:
        """An exported model artifact, as serving loads it: description, adapters, encoder, fusion (and
        the search's config and trial summary when present); not the optimizer state it resumes from."""
        from atflrec.model.artifact import ADAPTERS_DIR, ENCODER_FILE, FUSION_FILE, META_FILE

        root = Path(artifact_dir)
        for name in (META_FILE, ENCODER_FILE, FUSION_FILE, "train_config.yaml", "trial.json"):
            self.log_file(root / name, artifact_path)
        self.log_dir(root / ADAPTERS_DIR, f"{artifact_path}/{ADAPTERS_DIR}")

    def children(self) -> list[Any]:
        """Runs nested under this one (MLflow ``Run`` objects), at most 10,000."""
        if not self:
            return []
        return list(self.client.search_runs([self.ref.experiment_id], f"tags.`{PARENT}` = '{self.ref.run_id}'",
                                            max_results=10_000))

    def end(self, status: str = "FINISHED") -> None:
        if self:
            self.client.set_terminated(self.ref.run_id, status)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    store = local_store_dir(uri)
    location = (store / ARTIFACTS_DIR).as_uri() if store is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def _identity_hash(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def open_run(config: TrackingConfig | None, *, kind: str, name: str, identity: str | None = None,
             params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
             parent: RunRef | None = None, resume: bool = False) -> Run:
    """Start a run (nested under ``parent`` when given: same store and experiment), or with ``resume``
    reopen the newest run of this ``identity`` (what the run is, e.g. ``train:<storage>/<name>``);
    a run that does nothing when tracking is off."""
    if parent is None and (config is None or not config.enabled):
        return Run()
    uri = parent.uri if parent is not None else resolve_uri(config.uri)
    client = _mlflow_client(uri)
    experiment = parent.experiment_id if parent is not None else _experiment_id(client, config.experiment, uri)
    key = _identity_hash(identity) if identity is not None else None
    earlier = client.search_runs([experiment], f"tags.`{IDENTITY}` = '{key}'", max_results=1,
                                 order_by=["attributes.start_time DESC"]) if resume and key else []
    if earlier:
        run_id = earlier[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        own = {KIND: kind, SOURCE: f"atflrec {kind}", **({IDENTITY: key} if key else {}),
               **({PARENT: parent.run_id} if parent else {})}
        run_id = client.create_run(experiment, run_name=name, tags=own).info.run_id
    run = Run(RunRef(uri, experiment, run_id), client)
    run.set_tags({**context_tags(), **(tags or {})})
    # Where a run is recorded is not a setting of it (and a trial's own section is unused).
    run.log_params({k: v for k, v in (params or {}).items() if k != "tracking"})
    return run


@contextmanager
def tracked(config: TrackingConfig | None, **kwargs: Any) -> Iterator[Run]:
    """:func:`open_run` as a context: the run ends FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    run = open_run(config, **kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
    if run and kwargs.get("parent") is None:
        say(f"tracking: MLflow run {run.ref.run_id} ({kwargs['kind']}) in {run.ref.uri}; "
            f"to browse it: {ui_command(run.ref.uri)}")


# --- what a run records ------------------------------------------------------------------------------

def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; lists and other values as JSON text (bounded to MLflow's limit)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def split_metrics(metrics: Mapping[str, Mapping[str, float]], prefix: str = "final") -> dict[str, float]:
    """``{"test": {"auc": ...}}`` as ``{"final_test_auc": ...}``."""
    return {f"{prefix}_{split}_{name}": value for split, values in metrics.items() for name, value in values.items()}


def _git_commit() -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    return {GIT_COMMIT: commit.stdout.strip(), "atflrec.git_dirty": str(bool(dirty.stdout.strip())).lower()}


@lru_cache(maxsize=1)  # once per process: its code and libraries do not change while it runs
def context_tags() -> dict[str, str]:
    """The code a run ran: git commit (when the package is a checkout) and library versions."""
    from importlib.metadata import PackageNotFoundError, version

    tags = _git_commit()
    for name in VERSIONED:
        try:
            tags[f"atflrec.version.{name}"] = version(name)
        except PackageNotFoundError:
            continue
    return tags


def _digest(paths: list[Path]) -> str | None:
    """SHA-256 of the files' names and bytes, read in 1 MiB blocks (16 hex digits); None without files."""
    files = [p for p in paths if p.is_file()]
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def data_tags(samples: str | None, features: str | None) -> dict[str, str]:
    """Fingerprints of what a run read: the samples, the dataset they came from, the feature store
    (its parameters' hash and the live index, which changes whenever stored items change)."""
    from atflrec.samples import META_FILE

    tags: dict[str, str] = {}
    if samples is not None:
        root = Path(samples)
        tags["atflrec.samples_fingerprint"] = _digest(sorted(root.glob("*.parquet")) + [root / META_FILE])
        meta = root / META_FILE
        source = json.loads(meta.read_text()).get("source") if meta.is_file() else None
        if source:
            data = Path(source)
            tags["atflrec.dataset_fingerprint"] = _digest(
                [data / "dataset.json", data / "items.parquet", data / "interactions.parquet"])
    if features is not None:
        from atflrec.features.store import read_manifest

        manifest = read_manifest(features)
        if manifest is not None:
            key = json.dumps([manifest.get("param_hash"), manifest.get("index")])
            tags["atflrec.features_fingerprint"] = hashlib.sha256(key.encode()).hexdigest()[:16]
    return {k: v for k, v in tags.items() if v is not None}
