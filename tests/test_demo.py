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


def test_the_upload_line_sends_a_clip_longer_than_one_shell_argument(tmp_path: Path) -> None:
    """The printed v1/items line, run by bash, posts the whole clip as JSON (a 4 s clip's base64 is
    over the 128 KiB a single argument may hold)."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    clip = bytes(range(256)) * 800  # 200 KiB
    (tmp_path / "my-song.wav").write_bytes(clip)
    with HTTPServer(("127.0.0.1", 0), Receiver) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        upload = curl_lines(f"http://127.0.0.1:{server.server_port}/", [], [])[4]
        result = subprocess.run(["bash", "-c", upload], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    body = json.loads(received[0])
    assert body["item_id"] == "my-song" and base64.b64decode(body["audio"]) == clip
