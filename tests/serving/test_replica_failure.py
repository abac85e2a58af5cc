"""Killing a replica under a bounded load: the other replica keeps answering, Serve starts a
replacement, errors happen only between the kill and the replacement, and all requests after it
succeed. The errors in that window are counted and bounded."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import ray
from ray import serve

from atflrec.serving.config import DEPLOYMENT, ServeArgs

APP = "atflrec-failover-test"
PREFIX = "/f"
CLIENTS = 4
MAX_REQUESTS = 3000  # the load's bound; it stops far earlier once recovery is seen
RECOVERY_DEADLINE_S = 300  # a hang, not a slow machine, would hit this


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection dropped)


def replica_actors() -> set[str]:
    """Names of the application's live replica actors (Serve names them SERVE_REPLICA::app#deployment#id)."""
    prefix = f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def running_replicas() -> int:
    status = serve.status().applications[APP].deployments[DEPLOYMENT]
    return status.replica_states.get("RUNNING", 0)


def load(url: str, body: dict, outcomes: list[Outcome], stop: threading.Event, lock: threading.Lock,
         max_requests: int = MAX_REQUESTS) -> None:
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            with lock:
                if len(outcomes) >= max_requests:
                    return
            started = time.monotonic()
            try:
                status = client.post(url, json=body).status_code
            except httpx.TransportError:
                status = None
            with lock:
                outcomes.append(Outcome(started, time.monotonic(), status))
            time.sleep(0.01)


def wait_for(condition, what: str) -> float:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)
    return time.monotonic()


def test_a_killed_replica_is_replaced_and_errors_stay_in_the_window(serve_port, serving_data, artifacts,
                                                                    tmp_path) -> None:
    from atflrec.serving.app import make_app

    args = ServeArgs(models={"early": str(artifacts["early"])}, dataset=str(serving_data["dataset"]),
                     features=str(serving_data["features"]), items_dir=str(tmp_path / "items"))
    serve.run(make_app(args, {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}), name=APP,
              route_prefix=PREFIX)
    try:
        before = replica_actors()
        assert len(before) == 2
        url = f"http://127.0.0.1:{serve_port}{PREFIX}/v1/score"
        ids = sorted(_item_ids(serving_data))
        body = {"history": [{"item_id": ids[0], "liked": True}, {"item_id": ids[1], "liked": False}],
                "candidates": ids[2:5]}
        outcomes: list[Outcome] = []
        stop, lock = threading.Event(), threading.Lock()
        clients = [threading.Thread(target=load, args=(url, body, outcomes, stop, lock)) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            wait_for(lambda: sum(o.status == 200 for o in outcomes) >= 20, "the load to run")
            victim = sorted(before)[0]
            killed_at = time.monotonic()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            # Recovered: the victim is gone, a new replica took its place, and both are RUNNING.
            recovered_at = wait_for(
                lambda: victim not in replica_actors() and len(replica_actors() - before) == 1
                and running_replicas() == 2, "Serve to replace the killed replica")
            wait_for(lambda: sum(o.started > recovered_at for o in outcomes) >= 40, "requests after recovery")
        finally:
            stop.set()
            for client in clients:
                client.join()
    finally:
        serve.delete(APP)

    errors = [o for o in outcomes if o.status != 200]
    window = [o for o in outcomes if o.ended >= killed_at and o.started <= recovered_at]
    after = [o for o in outcomes if o.started > recovered_at]
    print(f"{len(outcomes)} requests; {len(window)} in the kill-to-recovery window "
          f"({recovered_at - killed_at:.1f} s), {len(errors)} failed: {sorted(str(o.status) for o in errors)}")
    assert len(outcomes) < MAX_REQUESTS, "the load hit its bound before recovery was seen"
    assert all(o.ended >= killed_at and o.started <= recovered_at for o in errors), "errors outside the window"
    assert all(o.status is None or o.status >= 500 for o in errors), "a failure was reported as bad input"
    # At most the requests in flight on the victim, plus those routed to it before Serve noticed.
    assert len(errors) <= 2 * CLIENTS
    assert sum(o.status == 200 for o in window) > 0, "the surviving replica kept answering"
    assert len(after) >= 40 and all(o.status == 200 for o in after)


def _item_ids(serving_data) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(serving_data["dataset"] / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
