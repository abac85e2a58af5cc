"""A Ray cluster of several nodes on one machine, for the multi-node tests and benchmarks.

Built on :class:`ray.cluster_utils.Cluster` (Ray's own test cluster): a head that runs no work
(no CPU, as on a real cluster's head) and worker nodes with their own resources, each a raylet
of its own. :meth:`LocalCluster.remove` ends a node the way a lost machine ends: its raylet and
every process on it are killed, with no graceful drain. Drivers connect with ``address`` (a
process started with ``ray.init(address=...)`` or a stage's ``address=`` setting) and attach to
the head, so removing a worker node never takes the driver, nor the Train controller that Ray
places beside it.

The head runs Ray's dashboard, as a real head does (:func:`own_dashboard`: every Ray instance the
tests and benchmarks start has one).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NODE_REGISTER_TIMEOUT_S = 120


def own_dashboard() -> dict[str, Any]:
    """``ray.init`` (or head node) settings for a dashboard of the cluster's own, on a free port of
    127.0.0.1. Ray Train (2.60) starts a placement-group cleaner per run that asks the state API,
    which the dashboard serves, whether the run's controller still lives:

    - without a dashboard Ray still records 127.0.0.1:8265 as the cluster's API address, so when
      another Ray instance's dashboard listens there, it answers "no such actor" and the cleaner
      removes the placement group of a run that is alive (seen: a worker group killed mid-run);
    - with none listening there, the cleaner of every run whose controller was killed (each trial
      ASHA stops) polls forever, a 200 MB process apiece.
    """
    (port,) = free_ports(1)
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}


class LocalCluster:
    def __init__(self, nodes: int, cpus_per_node: float = 1, object_store_mb: int = 150) -> None:
        from ray.cluster_utils import Cluster

        head: dict[str, Any] = {"num_cpus": 0, "object_store_memory": object_store_mb * 2**20, **own_dashboard()}
        with _address_file_kept():
            self._cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
        self._node_args = {"num_cpus": cpus_per_node, "object_store_memory": object_store_mb * 2**20}
        self.removed: list[str] = []
        for _ in range(nodes):
            self.add_node()

    @property
    def address(self) -> str:
        """The GCS address a driver passes to ``ray.init`` (or a stage's ``address=``)."""
        return self._cluster.address

    @property
    def dashboard_url(self) -> str:
        """For Ray's state API (``ray.util.state``)."""
        return f"http://{self._cluster.head_node.webui_url}"

    @property
    def head_id(self) -> str:
        return self._cluster.head_node.node_id

    @property
    def gcs_pid(self) -> int:
        """The head's GCS server process (it holds the cluster's state: actors, jobs, placement)."""
        return self._cluster.head_node.all_processes["gcs_server"][0].process.pid

    def worker_ids(self) -> list[str]:
        """The live worker nodes' ids, in the order they were added."""
        return [node.node_id for node in self._cluster.worker_nodes]

    def add_node(self) -> str:
        node = self._cluster.add_node(wait=False, **self._node_args)
        self._cluster.wait_for_nodes(timeout=NODE_REGISTER_TIMEOUT_S)
        return node.node_id

    def train_workers(self) -> dict[int, str]:
        """This cluster's live Ray Train worker processes: pid -> node id."""
        return {pid: node.node_id for node in self._cluster.list_all_nodes()
                for pid in train_worker_pids(self._raylet_pid(node))}

    def remove(self, node_id: str) -> None:
        """Lose a worker node: kill its raylet and the processes on it (no drain)."""
        if node_id == self.head_id:
            raise ValueError("the head holds the cluster's state: remove a worker node")
        node = next(n for n in self._cluster.worker_nodes if n.node_id == node_id)
        self._cluster.remove_node(node, allow_graceful=False)
        self.removed.append(node_id)

    def shutdown(self) -> None:
        """Stop every node; a driver in this process that joined the cluster leaves it first."""
        import ray

        if ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address:
            ray.shutdown()
        with _address_file_kept():
            self._cluster.shutdown()

    @staticmethod
    def _raylet_pid(node: Any) -> int:
        return node.all_processes["raylet"][0].process.pid


@contextmanager
def _address_file_kept() -> Iterator[None]:
    """Leave Ray's "latest cluster" file (``/tmp/ray/ray_current_cluster``) as it was: Ray's test
    cluster writes its own address there and deletes the file when it stops, so meanwhile any
    ``ray.init()`` without an address on this machine would join it, and a cluster started with
    ``ray start`` would no longer be found afterwards."""
    from ray._private import utils

    path = Path(utils.get_ray_address_file(None))
    before = path.read_text() if path.is_file() else None
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


@contextmanager
def local_cluster(nodes: int, **kwargs: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(nodes, **kwargs)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def train_worker_pids(raylet_pid: int | None = None) -> list[int]:
    """The live Ray Train worker processes a raylet started (by default the raylet of the node this
    driver started), less the processes they fork, which inherit the name. (Ray's state API would
    say this only where the dashboard runs.)"""
    import psutil

    if raylet_pid is None:
        import ray

        raylet_pid = ray._private.worker.global_worker.node.all_processes["raylet"][0].process.pid

    def is_train_worker(process: Any) -> bool:
        return "RayTrainWorker" in " ".join(process.cmdline())

    pids = []
    try:
        processes = psutil.Process(raylet_pid).children(recursive=True)
    except psutil.NoSuchProcess:  # a node being removed
        return []
    for process in processes:
        try:
            if is_train_worker(process) and not is_train_worker(process.parent()):
                pids.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def free_ports(count: int) -> list[int]:
    """Distinct ports that are free right now, below the kernel's ephemeral range (32768+), so an
    outgoing connection elsewhere on this shared machine cannot take one before Ray binds it, and
    above Ray's default worker ports (10002-19999), which other Ray instances here may use."""
    ports: list[int] = []
    for port in random.sample(range(20000, 32768), 200):
        with socket.socket() as s:
            try:
                s.bind(("", port))  # all interfaces: also refuses a port bound on loopback only
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"found only {len(ports)} of {count} free ports in 20000-32767")


def wait_for(condition: Any, timeout_s: float, interval_s: float = 0.5) -> bool:
    """Poll ``condition()`` until it is true or ``timeout_s`` has passed; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())
