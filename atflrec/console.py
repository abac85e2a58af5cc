"""What a person sees: atflrec's own lines on the terminal, every other program's output in a log file.

The long verbs (``demo``, ``train``, ``tune``, ``evaluate``, ``features``, ``serve``) run inside
:func:`quiet` unless ``-v`` is given:

- file descriptors 1 and 2 point at the log file, so whatever Ray, DeepSpeed, transformers, Ray
  Tune's status table or a C++ library writes, from Python or not, lands there;
- :func:`say` writes to the terminal (a duplicate of the original stdout taken before the switch);
- lines from Ray workers (Train workers, Tune trials, Ray Data tasks) reach the driver through Ray's
  log streaming: all of them go to the log file with Ray's ``(actor pid=...)`` prefix, and those
  a worker wrote with :func:`say` (marked with :data:`MARK`) also go to the terminal, unprefixed,
  once each.

Outside :func:`quiet` (``-v``, tests, library use) :func:`say` is ``print`` and Ray prints worker
lines as usual, minus the marks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

MARK = "\x1e"  # ASCII record separator: starts a worker's line meant for the terminal; never printed
RAY_HANDLER = "ray_print_logs"  # the name under which Ray's driver registers its worker-line printer
_terminal: IO[str] | None = None  # the terminal while quiet() is active, else None (say prints to sys.stdout)
_in_worker: bool | None = None


def _is_ray_worker() -> bool:
    """True in a Ray task or actor process (where stdout is streamed to the driver), not in a driver."""
    global _in_worker
    if _in_worker is None and "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            _in_worker = ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    return bool(_in_worker)


def say(*parts: object, err: bool = False, end: str = "\n") -> None:
    """Print a line of atflrec's own output: to the terminal in quiet mode, else to stdout (stderr
    with ``err``). In a Ray worker the line is marked, so that a quiet driver shows it."""
    text = " ".join(str(p) for p in parts)
    if _is_ray_worker():
        text = "\n".join(MARK + line for line in text.split("\n"))
    stream = _terminal if _terminal is not None else (sys.stderr if err else sys.stdout)
    print(text, file=stream, end=end, flush=True)


def log_path(log_dir: str | Path, verb: str) -> Path:
    """A new log file for one invocation of ``verb``: ``LOG_DIR/atflrec-VERB-<UTC time>.log``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(log_dir) / f"atflrec-{verb}-{stamp}.log"


class WorkerLines:
    """Ray's driver-side handler of streamed worker lines, split between a log and the terminal.

    Ray hands the driver batches ``{"pid", "actor_name", "task_name", "is_err", "lines", ...}``.
    Every line goes to ``log`` with its origin; marked lines also go to ``terminal`` without the
    mark. A marked line already shown recently (Ray can stream a line twice, e.g. from both a
    worker's stdout file and its Train log) is not shown again.
    """

    def __init__(self, log: IO[str], terminal: IO[str] | None, recent: int = 256) -> None:
        self.log, self.terminal = log, terminal
        self.shown: deque[str] = deque(maxlen=recent)

    def __call__(self, data: dict[str, Any]) -> None:
        origin = data.get("actor_name") or data.get("task_name") or "worker"
        for line in data.get("lines", []):
            marked = line.startswith(MARK)
            text = line.replace(MARK, "")
            self.log.write(f"({origin} pid={data.get('pid')}) {text}\n")
            if marked and self.terminal is not None and text not in self.shown:
                self.shown.append(text)
                self.terminal.write(text + "\n")
        self.log.flush()
        if self.terminal is not None:
            self.terminal.flush()


class LateLines:
    """Worker lines that arrive after :func:`quiet` ended (Ray's shutdown chatter): appended to its log."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file

    def __call__(self, data: dict[str, Any]) -> None:
        with open(self.log_file, "a") as log:
            WorkerLines(log, None)(data)


def route_worker_lines(handler: Callable[[dict[str, Any]], None]) -> None:
    """Make ``handler`` the driver's only printer of Ray worker lines (after ``ray.init``).

    Ray has no public hook for this: its printer is a handler named ``ray_print_logs`` on a
    dispatcher in ``ray._private``. If that moves in a later Ray, worker lines keep Ray's own
    printing (nothing is lost, the terminal is only noisier)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    dispatcher.remove_handler(RAY_HANDLER)
    dispatcher.add_handler(RAY_HANDLER, handler)


def strip_marks() -> None:
    """Verbose mode: Ray prints worker lines as usual, without atflrec's marks."""
    try:
        from ray._private.worker import print_to_stdstream
    except ImportError:
        return

    def printer(data: dict[str, Any]) -> None:
        print_to_stdstream({**data, "lines": [line.replace(MARK, "") for line in data.get("lines", [])]},
                           ignore_prefix=False)

    route_worker_lines(printer)


def after_ray_init() -> None:
    """Called by :func:`atflrec.ray_connect.connect` once Ray is up in this driver."""
    if _terminal is not None:
        route_worker_lines(WorkerLines(sys.stdout, _terminal))
    else:
        strip_marks()


@contextlib.contextmanager
def quiet(log_file: Path) -> Iterator[Path]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C libraries too) to
    ``log_file`` (appended to; created with its folder) while :func:`say` writes to the terminal.

    An unexpected exception leaving the block is written to the log in full and the log's path is
    named on the terminal's stderr; every exception is re-raised (so the CLI's exit codes hold)."""
    global _terminal
    if _terminal is not None:  # nested: the outer quiet() already routes everything
        yield log_file
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    terminal_err = os.fdopen(os.dup(2), "w", buffering=1)
    with open(log_file, "a", buffering=1) as log:
        log.write(f"=== {' '.join(sys.argv)} at {datetime.now(timezone.utc).isoformat(timespec='seconds')} ===\n")
        log.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        _terminal = terminal
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                after_ray_init()
        try:
            yield log_file
        except BaseException as exc:
            from atflrec.errors import UserError

            if not isinstance(exc, (KeyboardInterrupt, SystemExit, UserError)):  # a UserError says it all
                traceback.print_exc(file=sys.stderr)
                sys.stderr.flush()
                terminal_err.write(f"(the full output, traceback included, is in {log_file})\n")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            _terminal = None
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if "ray" in sys.modules:
                import ray

                if ray.is_initialized():  # lines Ray still streams (its workers' shutdown) go to the log too
                    route_worker_lines(LateLines(log_file))
            terminal.close()
            terminal_err.close()


class Progress:
    """Progress of a long loop as occasional lines (plain lines read well in logs and transcripts):
    one at each tenth of ``total`` or after ``every_s`` seconds, whichever comes first."""

    def __init__(self, what: str, total: int, every_s: float = 30.0) -> None:
        self.what, self.total, self.every_s = what, max(1, total), every_s
        self.done, self.start = 0, time.perf_counter()
        self.last_tenth, self.last_time = 0, self.start

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        tenth = 10 * self.done // self.total
        if tenth > self.last_tenth or now - self.last_time >= self.every_s or self.done >= self.total:
            self.last_tenth, self.last_time = tenth, now
            say(f"  {self.what} {self.done}/{self.total} ({now - self.start:.0f} s)")
