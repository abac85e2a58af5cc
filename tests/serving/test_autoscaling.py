"""Autoscaling seen working: under load a second replica starts, when idle the deployment returns
to one, and no request fails on the way (min_replicas 1, max_replicas 2, short delays)."""

from __future__ import annotations

import threading
import time

from ray import serve
from test_replica_failure import Outcome, _item_ids, load, wait_for

from atflrec.serving.config import DEPLOYMENT, ServeArgs

APP = "atflrec-autoscaling-test"
PREFIX = "/a"
CLIENTS = 4
MAX_REQUESTS = 20_000  # the load's bound: far above what a slow scale-up needs (seen: 3,000 were not enough in CI)
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 1,
               "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2}


def replicas(state: str = "RUNNING") -> int:
    return serve.status().applications[APP].deployments[DEPLOYMENT].replica_states.get(state, 0)


def test_a_second_replica_starts_under_load_and_leaves_when_idle(serve_port, serving_data, artifacts, tmp_path) -> None:
    from atflrec.serving.app import make_app

    args = ServeArgs(models={"early": str(artifacts["early"])}, dataset=str(serving_data["dataset"]),
                     features=str(serving_data["features"]), items_dir=str(tmp_path / "items"))
    options = {"autoscaling_config": AUTOSCALING, "ray_actor_options": {"num_cpus": 0.5}}
    serve.run(make_app(args, options), name=APP, route_prefix=PREFIX)
    try:
        assert replicas() == 1
        ids = sorted(_item_ids(serving_data))
        body = {"history": [{"item_id": ids[0], "liked": True}], "candidates": ids[1:6]}
        outcomes: list[Outcome] = []
        stop, lock = threading.Event(), threading.Lock()
        clients = [threading.Thread(target=load, args=(f"http://127.0.0.1:{serve_port}{PREFIX}/v1/score", body,
                                                        outcomes, stop, lock, MAX_REQUESTS)) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            scaled_up = wait_for(lambda: replicas() == 2, "a second replica under load")
            wait_for(lambda: sum(o.started > scaled_up for o in outcomes) >= 20, "requests served by two replicas")
        finally:
            stop.set()
            for client in clients:
                client.join()
        idle = time.monotonic()
        scaled_down = wait_for(lambda: replicas() == 1 and replicas("STOPPING") == 0, "the return to one replica")
    finally:
        serve.delete(APP)
    failed = [o for o in outcomes if o.status != 200]
    print(f"{len(outcomes)} requests, {len(failed)} failed; "
          f"back to one replica {scaled_down - idle:.1f} s after the load")
    assert outcomes and not failed and len(outcomes) < MAX_REQUESTS
