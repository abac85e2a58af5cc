"""The test session's Ray answers state queries about its own actors: Ray Train's placement-group
cleaner decides from them whether a run's controller lives, and removes the run's placement group
(killing its workers) when the answer is "no such actor"."""

from __future__ import annotations

import pytest


@pytest.mark.usefixtures("ray_cluster")
def test_the_state_api_finds_a_live_actor_of_this_cluster() -> None:
    import ray
    from ray.util.state import get_actor

    @ray.remote(num_cpus=0)
    class Alive:
        pass

    actor = Alive.remote()
    ray.get(actor.__ray_ready__.remote())
    try:
        state = get_actor(actor._actor_id.hex(), timeout=30)
        assert state is not None, "the state API does not know this cluster's actor (another's dashboard answered)"
        assert state.state == "ALIVE"
    finally:
        ray.kill(actor)
