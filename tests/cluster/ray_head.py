"""A real, separate Ray head for the job-submission tests, started with ``ray start --head``
(the ``ray_head`` fixture in this folder's conftest).

It lives on loopback with its own free ports and its own temp dir, so it never meets the session's
``ray.init`` cluster (or anyone else's Ray on this machine). It runs with token authentication and
a token of its own (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``), so the client must find and
send that token. ``ray stop`` would end every Ray on the machine; instead the head runs with
``--block`` and is stopped by signalling that one process, which takes its own Ray processes down.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atflrec.cluster.local import free_ports

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240
COMMAND_TIMEOUT_S = 600


@dataclass(frozen=True)
class Head:
    address: str  # the Jobs API, http://127.0.0.1:PORT
    token_file: Path
    temp_dir: Path

    def atflrec(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the ``atflrec`` console script from the repository root, as a user would."""
        return subprocess.run([str(BIN / "atflrec"), *args], env=self.client_env(**env), cwd=ROOT,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for an ``atflrec`` subprocess talking to this head: the token is found
        through RAY_AUTH_TOKEN_PATH alone (no RAY_AUTH_MODE), and no address leaks in from Ray's
        variables, so ``--address`` is what decides."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_AUTH_TOKEN_PATH"] = str(self.token_file)
        return env | extra


def _jobs_api_up(head: Head) -> bool:
    from atflrec.cluster.jobs import Jobs
    from atflrec.errors import UserError

    previous = os.environ.get("RAY_AUTH_TOKEN_PATH")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_file)
    try:
        Jobs(head.address).list()
        return True
    except UserError:
        return False
    finally:
        if previous is None:
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        else:
            os.environ["RAY_AUTH_TOKEN_PATH"] = previous


def start_head() -> Iterator[Head]:
    """Start the head, yield it once its Jobs API answers, stop it."""
    temp_dir = Path(tempfile.mkdtemp(prefix="atflrec-ray-", dir="/tmp"))  # short: Ray's socket paths
    token_file = temp_dir / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    (gcs, dashboard, client, node_manager, object_manager, agent_listen, agent_grpc, metrics,
     runtime_env_agent, *worker_ports) = free_ports(9 + 16)
    head = Head(f"http://127.0.0.1:{dashboard}", token_file, temp_dir)
    env = head.client_env(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}", f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env_agent}", f"--worker-port-list={','.join(map(str, worker_ports))}",
        "--num-cpus=2", "--num-gpus=0", f"--object-store-memory={200 * 1024**2}",
    ]
    log = (temp_dir / "ray-start.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _jobs_api_up(head):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{_log_tail(temp_dir)}")
            time.sleep(2)
        yield head
        # --block ends every Ray process of the head when one of them dies; say so, with its log.
        assert process.poll() is None, f"the Ray head died during the tests:\n{_log_tail(temp_dir)}"
    finally:
        process.terminate()  # --block: the head shuts down its own Ray processes on SIGTERM
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _log_tail(temp_dir: Path) -> str:
    return (temp_dir / "ray-start.log").read_text()[-4000:]
