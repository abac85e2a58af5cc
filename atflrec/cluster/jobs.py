"""``atflrec submit`` and ``atflrec jobs``: pipeline verbs as Ray jobs, through the Ray Jobs API.

A job's entrypoint is the ``atflrec`` command itself (``atflrec features --data ...``), run by
the job supervisor on the cluster; the stage then joins that cluster through the ``RAY_ADDRESS``
Ray sets for every job. Each node therefore needs ``atflrec`` installed, and the paths a stage
reads (dataset, configs) must mean the same on every node: a shared volume, or the URIs
(``s3://``, ``gs://``) the stages accept.

Address: ``--address`` (the head's dashboard, ``http://HEAD:8265``), else
``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``, the variables Ray's own ``ray job`` reads.
Ray's SDK lets those variables override an explicit address; here an explicit one wins.

Token authentication (Ray >= 2.52): a head started with ``RAY_AUTH_MODE=token``, or by
``ray start --head`` where a token already exists, answers only requests that carry the token
as ``Authorization: Bearer``. Ray 2.60's SDK attaches it only when the *client* also runs with
``RAY_AUTH_MODE=token``; this module finds it as Ray does (``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) without that variable, see :func:`auth_token`.
``RAY_AUTH_MODE=disabled`` sends none. ``ray get-auth-token`` on the head prints its token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from atflrec.config import ConfigError, read_yaml
from atflrec.console import say
from atflrec.errors import UserError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails

ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
POLL_SECONDS = 2.0
HEARTBEAT_SECONDS = 60.0


def resolve_address(address: str | None) -> str:
    """The Jobs API address: the explicit one, else the first of ``ADDRESS_VARIABLES`` that is set."""
    for candidate in (address, *(os.environ.get(name) for name in ADDRESS_VARIABLES)):
        if candidate:
            return candidate.rstrip("/")
    raise UserError(
        "no Ray cluster given: pass --address http://HEAD:8265 (the head's dashboard port) "
        "or set RAY_API_SERVER_ADDRESS"
    )


def auth_token(address: str) -> str | None:
    """The token to present to ``address``, looked up where Ray looks; None when there is none.

    ``~/.ray/auth_token`` is the token of clusters started on this machine; like ``ray.init``,
    which uses it unasked only for a cluster it finds here, it goes only to a local head (loopback,
    which includes port-forwards) unless ``RAY_AUTH_MODE=token`` asks for it. The variables are an
    explicit choice and always apply."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    if path := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        # Ray treats an unreadable RAY_AUTH_TOKEN_PATH as fatal rather than falling back; so do we.
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token file ({exc.strerror})") from None
        if not token:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: the token file is empty")
        return token
    default = Path(DEFAULT_TOKEN_FILE).expanduser()
    if default.is_file() and (mode == "token" or _is_local(address)):
        return default.read_text().strip() or None
    return None


def cleartext(address: str) -> bool:
    """Whether a token sent to ``address`` crosses a network unencrypted (http, not loopback)."""
    scheme = urlsplit(address).scheme if "://" in address else "http"
    return scheme != "https" and not _is_local(address)


def _is_local(address: str) -> bool:
    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    if address == "auto" or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def entrypoint(argv: Sequence[str]) -> str:
    """The shell command a job runs for ``atflrec ARGV``, each argument quoted."""
    return shlex.join(["atflrec", *argv])


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """A runtime_env YAML file, checked by Ray's own ``RuntimeEnv`` (which accepts unknown keys
    as plugins, so those are refused here: a misspelt ``env_var`` would otherwise do nothing)."""
    from ray.runtime_env import RuntimeEnv

    data = read_yaml(path)
    unknown = sorted(set(data) - RuntimeEnv.known_fields)
    if unknown:
        known = ", ".join(sorted(k for k in RuntimeEnv.known_fields if not k.startswith("_")))
        raise ConfigError(f"{path}: unknown runtime_env key(s) {unknown}; Ray knows {known}")
    try:
        RuntimeEnv(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return data


@contextmanager
def _api_errors(address: str, doing: str) -> Iterator[None]:
    """Turn the Jobs SDK's failures into UserErrors that name the address."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        reason = str(exc).splitlines()[0]
        raise UserError(
            f"the Ray cluster at {address} refused this client's token ({reason}).\n"
            "Set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on the head),\n"
            "or RAY_AUTH_MODE=token to send ~/.ray/auth_token to a head that is not on this machine"
        ) from None
    except OSError as exc:  # refused, unknown host, reset: requests' errors and ConnectionError are OSErrors
        raise UserError(
            f"cannot reach the Ray Jobs API at {address}: {exc}\n"
            "Is the head running, and its dashboard port (8265) reachable from here?"
        ) from None
    except (RuntimeError, ValueError) as exc:  # the server said no: unknown job, repeated job id, ...
        raise UserError(f"the Ray Jobs API at {address} could not {doing}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The telling line of an SDK error: the job server answers a failed request with its whole
    traceback, whose last ``SomeError: ...`` line is the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip(" .")]
    errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception): ", line)]
    return errors[-1] if errors else (lines[0] if lines else type(exc).__name__)


@contextmanager
def _only_address(address: str) -> Iterator[None]:
    """Ray's SDK prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS to the address it is given; point
    both at ``address`` while the client resolves it, then restore them."""
    saved = {name: os.environ.get(name) for name in ADDRESS_VARIABLES}
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Jobs:
    """The Jobs API of one Ray cluster. Every failure is a UserError naming the address."""

    def __init__(self, address: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = resolve_address(address)
        token = auth_token(self.address)
        if token and cleartext(self.address):
            say(f"warning: sending the Ray cluster token to {self.address} over plain http: anyone on the path can "
                "read it. Use https (a TLS-terminating ingress or `kubectl port-forward` to 127.0.0.1)", err=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with _api_errors(self.address, "connect"), _only_address(self.address):
            self._client = JobSubmissionClient(self.address, headers=headers)

    def submit(self, argv: Sequence[str], *, runtime_env: dict[str, Any] | None = None,
               job_id: str | None = None) -> str:
        """Start ``atflrec ARGV`` as a job; returns its submission id."""
        with _api_errors(self.address, "submit the job"):
            return self._client.submit_job(entrypoint=entrypoint(argv), runtime_env=runtime_env,
                                           submission_id=job_id, metadata={"atflrec_verb": argv[0]})

    def info(self, job_id: str) -> JobDetails:
        with _api_errors(self.address, f"find job {job_id!r}"):
            return self._client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with _api_errors(self.address, f"read the logs of job {job_id!r}"):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the cluster to stop the job; False when it had already finished."""
        with _api_errors(self.address, f"stop job {job_id!r}"):
            return self._client.stop_job(job_id)

    def list(self) -> list[JobDetails]:
        with _api_errors(self.address, "list jobs"):
            return self._client.list_jobs()

    def wait(self, job_id: str, *, logs: TextIO | None, progress: TextIO) -> JobDetails:
        """Follow the job until it ends: stream its logs to ``logs`` (when given) and report status
        changes, and a heartbeat while it runs, to ``progress``; returns the final job details."""
        if logs is not None:
            import aiohttp

            # The SDK logs every websocket close at INFO; the status line below says it better.
            logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
            try:
                asyncio.run(self._tail(job_id, logs))
            except (RuntimeError, OSError, aiohttp.ClientError) as exc:  # e.g. a proxy that drops websockets
                print(f"log stream ended early ({exc}); polling the job's status instead", file=progress)
        last_status, last_report = None, 0.0
        while True:
            info = self.info(job_id)
            now = time.monotonic()
            if info.status != last_status or now - last_report >= HEARTBEAT_SECONDS:
                seconds = _seconds(info)
                took = f" ({seconds:.0f} s)" if seconds is not None else ""
                print(f"job {job_id}: {info.status}{took}", file=progress, flush=True)
                last_status, last_report = info.status, now
            if info.status.is_terminal():
                return info
            time.sleep(POLL_SECONDS)

    async def _tail(self, job_id: str, out: TextIO) -> None:
        async for chunk in self._client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()


def _seconds(info: JobDetails) -> float | None:
    """How long the job ran, or has run so far; None before it started."""
    if not info.start_time:
        return None
    return ((info.end_time or time.time() * 1000) - info.start_time) / 1000


def describe(info: JobDetails) -> str:
    """What ``atflrec jobs status`` prints: ``ID: STATUS`` first, for scripts, then the details."""
    lines = [f"{info.submission_id}: {info.status}", f"  entrypoint: {info.entrypoint}"]
    if info.message:
        lines.append(f"  message: {info.message}")
    if (seconds := _seconds(info)) is not None:
        lines.append(f"  {'ran' if info.end_time else 'running'} for {seconds:.0f} s")
    if info.driver_exit_code not in (None, 0):
        lines.append(f"  exit code: {info.driver_exit_code}")
    return "\n".join(lines)
