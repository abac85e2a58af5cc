"""The distributed stages on a multi-node Ray cluster (a head and three 1-CPU worker nodes on this
machine, :mod:`atflrec.cluster.local`), driven as a user drives them: the ``atflrec`` command with
``address=`` pointing at the cluster. A node is lost the way a machine is (its raylet and every
process on it killed) in the middle of a Train run and of a Tune search."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from atflrec.cluster.local import LocalCluster, local_cluster, wait_for
from atflrec.testing import build_tiny_base, registered_checkpoint
from atflrec.training.worker import read_worker_groups
from atflrec.tuning.trial import OUTCOME_FILE, REPORTS_FILE

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
N_MELS = 8
STAGE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base model, synthetic data (12 users, 24 items, 0.5 s clips) and its samples."""
    from atflrec.data.format import load_dataset
    from atflrec.data.synth import SynthConfig, generate
    from atflrec.samples import SampleConfig, make_samples

    root = tmp_path_factory.mktemp("multinode")
    build_tiny_base(root / "base")
    generate(SynthConfig(users=12, items=24, clip_seconds=0.5, interactions_per_user=(8, 12)), root / "data")
    make_samples(load_dataset(root / "data"), root / "samples", SampleConfig(cold_item_fraction=0.2))
    return root


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(nodes=3, cpus_per_node=1) as cluster:
        yield cluster


def atflrec(*args: str) -> subprocess.Popen[str]:
    """The ``atflrec`` command, as a user runs it, with its output kept."""
    return subprocess.Popen([str(BIN / "atflrec"), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=STAGE_TIMEOUT_S)
    assert process.returncode == 0, output[-4000:]
    return output


def build_features(world: Path, cluster: LocalCluster, store: Path) -> str:
    return finish(atflrec("features", "--data", str(world / "data"), "--out", str(store), "--n-mels", str(N_MELS),
                   "--clip-seconds", "0.5", f"address={cluster.address}"))


def train_config(world: Path, features: Path, epochs: int, workers: int) -> dict:
    """The tiny model on 16 shots, batches of 4, one worker per 1-CPU node."""
    return {
        "model": {"base_model": str(world / "base"), "encoder": {"n_mels": N_MELS, "width": 16},
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}},
        "samples": str(world / "samples"), "features": str(features), "shots": 16, "seed": 0,
        "optim": {"lr": 1e-2, "encoder_lr": 1e-2, "batch_size": 4, "epochs": epochs},
        "eval_splits": ["val", "test"], "max_eval_samples": 8,
        "deepspeed": {"config": "deepspeed/zero2_cpu"},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "run": {}, "address": None,
    }


def test_feature_tasks_run_on_every_worker_node(world: Path, cluster: LocalCluster, tmp_path: Path) -> None:
    from ray.util.state import list_tasks

    output = build_features(world, cluster, tmp_path / "features")
    assert "24 input items = 24 featurised" in output, output[-2000:]
    tasks = list_tasks(address=cluster.dashboard_url, detail=True, limit=10_000, raise_on_missing_output=False)
    nodes = Counter(t.node_id for t in tasks if "_featurise_batch" in t.name and t.state == "FINISHED")
    assert set(nodes) == set(cluster.worker_ids()), nodes  # all three worker nodes, never the head


def test_a_train_run_that_loses_a_node_resumes_from_its_checkpoint(world: Path, cluster: LocalCluster,
                                                                   tmp_path: Path) -> None:
    build_features(world, cluster, tmp_path / "features")
    epochs, workers, shots, batch = 4, 2, 16, 4
    config = {**train_config(world, tmp_path / "features", epochs, workers),
              "run": {"name": "lose-a-node", "storage_path": str(tmp_path / "storage"), "max_failures": 1},
              "address": cluster.address}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "storage" / "lose-a-node"
    process = atflrec("train", "--config", str(tmp_path / "train.yaml"))

    assert wait_for(lambda: registered_checkpoint(run_dir) or process.poll() is not None, STAGE_TIMEOUT_S)
    assert process.poll() is None, "the run ended before its first checkpoint"
    nodes = set(cluster.train_workers().values())
    assert len(nodes) == workers, nodes  # one worker per 1-CPU node
    lost = sorted(nodes)[0]
    cluster.remove(lost)
    output = finish(process)

    found = re.search(r"resumed at stage 0, epoch (\d+), step (\d+) \(optimizer state restored\)", output)
    assert found, output[-3000:]
    per_epoch = -(-(shots // workers) // batch)
    assert 1 <= int(found[1]) < epochs and int(found[2]) == int(found[1]) * per_epoch  # the checkpoint's step
    last = json.loads(max(run_dir.glob("checkpoint-*/progress.json")).read_text())
    assert last["global_step"] == epochs * per_epoch
    assert len(last["losses"]["shared"]) == epochs * per_epoch  # each step once: none lost, none repeated


def test_a_search_that_loses_a_node_loses_no_trial_and_runs_none_twice(world: Path, cluster: LocalCluster,
                                                                        tmp_path: Path) -> None:
    trials = 4  # FIFO: every trial runs to its end, the lost node's included
    train = train_config(world, tmp_path / "features", epochs=3, workers=1)
    train.pop("run"), train.pop("address")
    space = {"train": train, "space": {"model.lora.r": [2, 4], "optim.lr": {"loguniform": [1e-3, 3e-2]}},
             "data": str(world / "data"), "feature_clip_seconds": 0.5, "num_samples": trials,
             "scheduler": "fifo", "seed": 0,
             "out": str(tmp_path / "search"), "address": cluster.address}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    process = atflrec("tune", "--space", str(tmp_path / "space.yaml"))
    runs = tmp_path / "search" / "trials"

    def running_groups() -> dict[str, dict]:
        """Each unfinished trial's latest worker group, as its rank 0 recorded it on starting."""
        latest = {d.name.removeprefix("trial-"): read_worker_groups(str(d)) for d in runs.glob("trial-*")
                  if not (d / OUTCOME_FILE).exists()}
        return {trial: started[-1] for trial, started in latest.items() if started}

    def a_trial_has_checkpointed_and_two_run() -> bool:
        return any(registered_checkpoint(d) for d in runs.glob("trial-*")) and len(running_groups()) >= 2
    assert wait_for(lambda: a_trial_has_checkpointed_and_two_run() or process.poll() is not None, STAGE_TIMEOUT_S)
    assert process.poll() is None, "the search ended before a node could be removed"
    # The node of the group that started last: the one furthest from finishing, maybe with no checkpoint yet.
    victim, group = max(running_groups().items(), key=lambda item: item[1]["started"])
    cluster.remove(group["node_id"])
    cluster.add_node()  # what an autoscaler does; the search must not depend on it for the lost trials
    output = finish(process)

    rows = pq.read_table(tmp_path / "search" / "results.parquet").to_pylist()
    results = {r["trial_id"]: r for r in rows}
    assert len(rows) == len(results) == trials
    assert Counter(r["status"] for r in results.values()) == {"completed": trials}, output[-3000:]  # none lost
    # The lost node's trial recovered: its driver retried (resuming its run) or its worker group was
    # replaced inside the run, with or without a checkpoint to resume from.
    lost = results[victim]
    assert lost["attempts"] > 1 or lost["worker_group_replaced"], lost
    for trial_dir in runs.glob("trial-*"):
        reports = [json.loads(line) for line in (trial_dir / REPORTS_FILE).read_text().splitlines()]
        keys = [(r["stage_index"], r["epoch"]) for r in reports]
        assert len(keys) == len(set(keys)), (trial_dir.name, keys)  # no epoch trained and reported twice
    assert "0 failed" in output, output[-3000:]


