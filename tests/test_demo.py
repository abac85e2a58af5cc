"""The demo's own pieces: it refuses a taken port before any work, and its curl lines are valid shell."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from atflrec.demo import DemoConfig, curl_lines, run_demo
from atflrec.errors import UserError


def test_a_taken_port_is_refused_before_any_work(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"port {port} on 127.0.0.1 is in use.*serve_port="):
            run_demo(DemoConfig(workdir=str(tmp_path / "demo"), serve_port=port))
    assert not (tmp_path / "demo").exists()


def test_curl_lines_are_valid_shell_with_json_bodies() -> None:
    history = [{"item_id": "i0001", "liked": True}, {"item_id": "it's", "liked": False}]
    lines = curl_lines("http://127.0.0.1:8000/", history, ["i0002", "i0003"])
    assert {"healthz", "v1/model", "v1/recommend", "v1/score", "v1/items"} <= {
        part.split("8000/")[1] for line in lines for part in shlex.split(line.split("   #")[0]) if "8000/" in part}
    for line in lines[:-1]:
        assert subprocess.run(["bash", "-n", "-c", line], capture_output=True).returncode == 0, line
    recommend = shlex.split(lines[2])
    assert json.loads(recommend[recommend.index("-d") + 1])["history"] == history
