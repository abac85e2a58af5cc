"""A large search on a simulated multi-node cluster, one node lost halfway.

    python bench/tune_scale.py --trials 200 --out bench/results/tune_scale.json

Starts a Ray cluster of ``--nodes`` 1-CPU worker nodes and a head that runs no work on this
machine (:mod:`atflrec.cluster.local`), then runs ``atflrec tune``'s search in this process as its
driver: ``--trials`` trials of the tiny local model (1-worker Ray Train runs, early fusion, up to
``--epochs`` validations each), ASHA (grace 1, reduction factor 2), random search, stopped trials'
checkpoints pruned as they stop. When half the trials have started, the worker node running the
most Train workers is killed (raylet and every process on it, no drain); the search goes on on
the nodes left.

Records, from the search's own files (``results.parquet``, each trial's ``reports.jsonl`` and
``attempts.jsonl``, Tune's ``result.json``):

- ``completed``, ``stopped`` (by ASHA), ``failed``; ``retried``: trials whose driver started more
  than once (each retry resumes its Train run); ``worker_group_replaced``: trials whose run
  started more worker groups than its driver did (a lost worker replaced inside the run);
- ``lost``: trials that ended in error or have no result (must be 0); ``repeated``: trials that
  reported some epoch twice, i.e. trained it again (must be 0);
- ``peak_disk_mb`` of the search directory (sampled every ``--sample-s``), ``driver_rss_mb`` (peak
  of this process, which holds Tune's trial table), the head's GCS peak RSS, and the Ray worker
  processes alive (peak and last: actors that outlive their trials would grow it);
- ``trials_per_min``: finished trials per minute in consecutive windows of ``--window`` trials, by
  finishing order, and ``rate_last_vs_first_window`` (does scheduling overhead grow with the count?).

Writes ``--out`` (JSON), a PNG beside it (Ray's, Tune's and the trials' own output go to ``--log``;
this script prints its own lines): trials finished over time, disk and RSS over time, the
node removal marked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

from atflrec.console import quiet, say

PACKAGES = ("atflrec", "ray", "torch", "deepspeed")


def prepare(work: Path) -> None:
    """Data, samples and the tiny base model under ``work``; the feature store is the search's."""
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.samples import SampleConfig, make_samples
    from atflrec.testing import build_tiny_base

    generate(SynthConfig(users=24, items=48, clip_seconds=0.5, interactions_per_user=(8, 12)), work / "data")
    make_samples(load_dataset(work / "data"), work / "samples", SampleConfig(cold_item_fraction=0.1))
    build_tiny_base(work / "base")


def space(work: Path, trials: int, epochs: int, address: str) -> dict[str, Any]:
    return {
        "train": {
            "model": {"base_model": str(work / "base"), "encoder": {"n_mels": 8, "width": 16},
                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}},
            "samples": str(work / "samples"), "features": str(work / "features"),
            "shots": 8, "seed": 0, "eval_splits": ["val"], "max_eval_samples": 8,
            "optim": {"batch_size": 4, "epochs": epochs, "encoder_lr": 1e-2},
            "deepspeed": {"config": "deepspeed/zero2_cpu"},
            "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "run": {"keep_best": 1},
        },
        "space": {"model.lora.r": [2, 4, 8], "optim.lr": {"loguniform": [1e-4, 3e-2]}},
        "data": str(work / "data"), "feature_clip_seconds": 0.5,
        "num_samples": trials, "scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 2},
        "search": "random", "seed": 0, "out": str(work / "search"), "address": address,
    }


def dir_mb(root: Path) -> float:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # a checkpoint pruned while we walked
                pass
    return total / 2**20


class Watch(threading.Thread):
    """Samples disk, RSS and started trials; removes a node once half the trials have started."""

    def __init__(self, cluster: Any, out: Path, trials: int, every_s: float) -> None:
        """``out``: the search's directory (its ``out`` setting)."""
        super().__init__(daemon=True)
        self.cluster, self.out, self.trials, self.every_s = cluster, out, trials, every_s
        self.samples: list[dict[str, float]] = []
        self.removal: dict[str, Any] | None = None
        self.done = threading.Event()
        self.start_time = time.time()
        self.gcs = psutil.Process(cluster.gcs_pid)

    def started_trials(self) -> int:
        from atflrec.tuning.search import RUNS
        from atflrec.tuning.trial import ATTEMPTS_FILE

        return sum(1 for _ in (self.out / RUNS).glob(f"trial-*/{ATTEMPTS_FILE}"))

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.wait(self.every_s):
            started = self.started_trials()
            self.samples.append({"t": time.time() - self.start_time, "disk_mb": dir_mb(self.out),
                                 "driver_rss_mb": me.memory_info().rss / 2**20,
                                 "gcs_rss_mb": self.gcs.memory_info().rss / 2**20, "started": started,
                                 "ray_processes": ray_processes()})
            if self.removal is None and started >= self.trials // 2:
                self.remove_busiest_node(started)

    def remove_busiest_node(self, started: int) -> None:
        counts: dict[str, int] = {}
        for node in self.cluster.train_workers().values():
            counts[node] = counts.get(node, 0) + 1
        if not counts:
            return  # between trials: try at the next sample
        node = max(counts, key=counts.get)
        self.cluster.remove(node)
        self.removal = {"node_id": node, "train_workers_on_it": counts[node], "trials_started": started,
                        "t": time.time() - self.start_time}
        say(f"removed node {node[:12]} ({counts[node]} Train worker(s) on it) after {started} trials started")


def ray_processes() -> int:
    """Ray worker processes on the machine: a leak (actors that outlive their trials) grows this."""
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or [""]
        count += bool(cmdline) and cmdline[0].startswith("ray::")
    return count


def trial_end_times(search_dir: Path) -> list[float]:
    """Each trial's last report time (Tune's result.json), sorted."""
    ends = []
    for result in search_dir.glob("trial-*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        if lines:
            ends.append(json.loads(lines[-1])["timestamp"])
    return sorted(ends)


def rates(ends: list[float], started: float, window: int) -> list[dict[str, float]]:
    """Trials finished per minute in consecutive windows of ``window`` trials, by finishing order."""
    out, previous = [], started
    for i in range(window, len(ends) + 1, window):
        span = ends[i - 1] - previous
        out.append({"trials": i, "per_min": round(window / (span / 60), 2) if span > 0 else None})
        previous = ends[i - 1]
    return out


def outcome_counts(out: Path, trials: int) -> dict[str, Any]:
    from atflrec.storage import read_json_lines
    from atflrec.tuning.search import EXPERIMENT, RUNS
    from atflrec.tuning.trial import REPORTS_FILE

    rows = pq.read_table(out / "results.parquet").to_pylist()
    repeated = []
    for run in (out / RUNS).glob("trial-*"):
        path = run / REPORTS_FILE
        keys = [(r["stage_index"], r["epoch"]) for r in read_json_lines(str(path))]
        if len(keys) != len(set(keys)):
            repeated.append(run.name)
    statuses = [r["status"] for r in rows]
    return {
        "trials": trials, "results": len(rows), "distinct_trial_ids": len({r["trial_id"] for r in rows}),
        "completed": statuses.count("completed"), "stopped": statuses.count("stopped"),
        "failed": statuses.count("error"),
        "retried": sum(r["attempts"] > 1 for r in rows),
        "worker_group_replaced": sum(bool(r["worker_group_replaced"]) for r in rows),
        "lost": statuses.count("error") + (trials - len({r["trial_id"] for r in rows})),
        "repeated": len(repeated), "repeated_trials": repeated,
        "trial_epochs": sum(r["reports"] for r in rows),
        "search_dirs": sum(1 for _ in (out / EXPERIMENT).glob("trial-*")),
    }


def plot(samples: list[dict[str, float]], ends: list[float], started: float, removal: dict[str, Any] | None,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    minutes = [(e - started) / 60 for e in ends]
    left.plot(minutes, range(1, len(ends) + 1), color="tab:blue")
    left.set_xlabel("minutes")
    left.set_ylabel("trials finished")
    t = [s["t"] / 60 for s in samples]
    right.plot(t, [s["disk_mb"] for s in samples], label="search dir (MB)")
    right.plot(t, [s["driver_rss_mb"] for s in samples], label="driver RSS (MB)")
    right.plot(t, [s["gcs_rss_mb"] for s in samples], label="GCS RSS (MB)")
    right.set_xlabel("minutes")
    right.legend(fontsize=8)
    for ax in (left, right):
        if removal:
            ax.axvline(removal["t"] / 60, color="tab:red", ls="--", lw=1)
    left.set_title("trials finished (red: a node lost)")
    right.set_title("disk and memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/tune_scale.json"))
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4, help="validations of the longest trial (ASHA's max_t)")
    parser.add_argument("--nodes", type=int, default=4, help="1-CPU worker nodes (one is removed halfway)")
    parser.add_argument("--window", type=int, default=25, help="trials per throughput window")
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed after)")
    parser.add_argument("--log", type=Path, help="Ray's, Tune's and the trials' output (default: runs/logs/)")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from atflrec.cluster.local import local_cluster
    from atflrec.io import atomic_write_text
    from atflrec.tuning.search import EXPERIMENT, run_search
    from atflrec.tuning.space import TuneSpace

    log = args.log or Path("runs/logs") / f"tune_scale-{datetime.now():%Y%m%d-%H%M%S}.log"
    print(f"Ray's, Tune's and the trials' output: {log}")
    with tempfile.TemporaryDirectory() as tmp, quiet(log), local_cluster(args.nodes, cpus_per_node=1) as cluster:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prepare(work)
        settings = space(work, args.trials, args.epochs, cluster.address)
        out = Path(settings["out"])  # the search's directory: its trials, results and Tune's state
        watch = Watch(cluster, out, args.trials, args.sample_s)
        started = time.time()
        watch.start()
        run_search(TuneSpace.model_validate(settings))
        seconds = time.time() - started
        watch.done.set()
        watch.join()
        ends = trial_end_times(out / EXPERIMENT)
        counts = outcome_counts(out, args.trials)
        windows = rates(ends, started, args.window)
        plot(watch.samples, ends, started, watch.removal, args.out.with_suffix(".png"))
        final_disk = dir_mb(out)
    per_min = [w["per_min"] for w in windows if w["per_min"]]
    report = {
        "benchmark": "tune_scale",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **counts,
        "node_removed": watch.removal,
        "nodes": {"worker_nodes": args.nodes, "cpus_per_node": 1, "head_cpus": 0},
        "epochs_max": args.epochs,
        "peak_disk_mb": round(max(s["disk_mb"] for s in watch.samples), 1),
        "final_disk_mb": round(final_disk, 1),
        "driver_rss_mb": round(max(s["driver_rss_mb"] for s in watch.samples), 1),
        "gcs_rss_mb": round(max(s["gcs_rss_mb"] for s in watch.samples), 1),
        "ray_processes": {"peak": max(s["ray_processes"] for s in watch.samples),
                          "last": watch.samples[-1]["ray_processes"]},
        "trials_per_min": windows,
        "rate_last_vs_first_window": round(per_min[-1] / per_min[0], 3) if len(per_min) > 1 else None,
        "seconds": round(seconds, 1),
        "overall_trials_per_min": round(len(ends) / (seconds / 60), 2),
        "cores": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in PACKAGES},
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"{counts['results']} of {args.trials} trials: {counts['completed']} completed, {counts['stopped']} stopped, "
          f"{counts['failed']} failed, {counts['retried']} retried; lost {counts['lost']}, repeated "
          f"{counts['repeated']}; peak disk {report['peak_disk_mb']} MB, driver RSS {report['driver_rss_mb']} MB; "
          f"{report['overall_trials_per_min']} trials/min; wrote {args.out}")


if __name__ == "__main__":
    main()
