"""An MLflow server or UI as a subprocess for the tracking tests (a module of its own so tests can import it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

MLFLOW = str(Path(sys.executable).parent / "mlflow")
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(args: list[str], port: int, log: Path) -> Iterator[str]:
    """``mlflow ARGS...`` serving on 127.0.0.1:``port`` (output to ``log``) until the block ends; yields its
    URL once ``/health`` answers. The whole process group is stopped at the end."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        # No job runner: it starts five queue consumers the tests never use, on a 2-core machine.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        process = subprocess.Popen([MLFLOW, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "not up"
                raise RuntimeError(f"mlflow {args[0]} {state} after {START_TIMEOUT_S} s or less:\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
