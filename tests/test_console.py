"""Quiet mode: atflrec's own lines on the terminal, every other program's output in the log file."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atflrec.console import MARK, LateLines, Progress, WorkerLines, say


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_quiet_sends_other_output_to_the_log_and_ours_to_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.log"
    result = _run(f"""
        import logging, os, warnings
        from pathlib import Path
        from atflrec.console import quiet, say
        with quiet(Path({str(log)!r})):
            print("a library's print")
            os.write(2, b"a C library's stderr\\n")
            warnings.warn("a library's FutureWarning", FutureWarning)
            logging.getLogger("somelib").warning("a library's log record")
            say("our line")
        say("after the block")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "our line\nafter the block\n"
    assert result.stderr == ""
    text = log.read_text()
    for line in ("a library's print", "a C library's stderr", "FutureWarning", "a library's log record"):
        assert line in text
    assert "our line" not in text


def test_an_exception_in_quiet_mode_is_logged_in_full_and_named_on_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    result = _run(f"""
        from pathlib import Path
        from atflrec.console import quiet
        with quiet(Path({str(log)!r})):
            raise RuntimeError("deep inside")
    """)
    assert result.returncode == 1
    assert f"the full output, traceback included, is in {log}" in result.stderr
    assert "RuntimeError: deep inside" in result.stderr  # Python's own report, after the terminal is restored
    assert "Traceback" in log.read_text() and "deep inside" in log.read_text()


def test_worker_lines_go_to_the_log_and_marked_ones_once_to_the_terminal() -> None:
    log, terminal = io.StringIO(), io.StringIO()
    handler = WorkerLines(log, terminal)
    handler({"pid": 7, "actor_name": "RayTrainWorker", "lines": [
        "Loading weights: 100%", f"{MARK}demo: [text 1/2] step 8: loss 0.68"]})
    handler({"pid": 7, "actor_name": "RayTrainWorker", "lines": [f"{MARK}demo: [text 1/2] step 8: loss 0.68"]})
    handler({"pid": 9, "task_name": "featurise", "lines": [f"{MARK}demo: [text 2/2] step 16: loss 0.61"]})
    assert terminal.getvalue() == "demo: [text 1/2] step 8: loss 0.68\ndemo: [text 2/2] step 16: loss 0.61\n"
    assert log.getvalue().splitlines() == [
        "(RayTrainWorker pid=7) Loading weights: 100%",
        "(RayTrainWorker pid=7) demo: [text 1/2] step 8: loss 0.68",
        "(RayTrainWorker pid=7) demo: [text 1/2] step 8: loss 0.68",
        "(featurise pid=9) demo: [text 2/2] step 16: loss 0.61",
    ]


def test_worker_lines_after_quiet_mode_are_appended_to_its_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("earlier\n")
    LateLines(log)({"pid": 3, "actor_name": "raylet", "lines": ["WARNING: 14 workers", f"{MARK}late line"]})
    assert log.read_text() == "earlier\n(raylet pid=3) WARNING: 14 workers\n(raylet pid=3) late line\n"


def test_progress_says_a_line_per_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("items featurised", 100, every_s=3600)
    for _ in range(40):
        progress.update(5)  # 200 of 100: past the end the line is said every update
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0].strip() for line in lines[:10]] == [
        f"items featurised {n}/100" for n in range(10, 101, 10)]


def test_outside_quiet_mode_say_prints_to_stdout_or_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    say("to stdout")
    say("to stderr", err=True)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("to stdout\n", "to stderr\n")


@pytest.mark.integration
def test_a_quiet_ray_driver_shows_only_the_workers_own_lines(tmp_path: Path) -> None:
    """A real Ray (its own, in a subprocess): a task's say() line reaches the terminal unprefixed,
    its plain prints and Ray's own start-up lines only the log."""
    log = tmp_path / "ray.log"
    result = _run(f"""
        import time
        from pathlib import Path
        import ray
        from atflrec.console import quiet, say
        from atflrec.ray_connect import connect

        @ray.remote(num_cpus=0)
        def chatty():
            print("worker noise")
            say("worker says hello")
            return 1

        with quiet(Path({str(log)!r})):
            ray.init(num_cpus=1, include_dashboard=False)
            connect(None)  # Ray is up: connect only routes the worker lines
            ray.get(chatty.remote())
            deadline = time.time() + 60
            while "worker says hello" not in Path({str(log)!r}).read_text() and time.time() < deadline:
                time.sleep(0.5)
            time.sleep(1)
            ray.shutdown()
    """)
    assert result.returncode == 0, result.stderr + log.read_text()
    assert result.stdout.splitlines() == ["worker says hello"]
    text = log.read_text()
    assert "worker noise" in text and "worker says hello" in text and MARK not in text
