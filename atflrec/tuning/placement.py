"""Reservations that Ray Train runs leave behind when their controller dies, e.g. a trial ASHA stopped.

A Train V2 run reserves its workers in a placement group that its controller actor creates. Ray
ties a placement group's lifetime to the job, not to the actor that made it, so when Tune ends a
trial early its controller dies and the run's CPUs and GPUs stay reserved until the search ends.
Ray Train's own cleaner (a detached actor) finds dead controllers through the state API, which
needs the dashboard and breaks where several Ray instances share a machine (it then exits without
cleaning); later trials would wait for those resources forever. So the search removes, in its own
job, every placement group whose creating actor has died. This reads Ray's placement-group table
from the GCS through ``ray._private.state`` (the public ``placement_group_table()`` omits the
creator fields).
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from atflrec.console import say


def remove_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor is dead; returns how many."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        info = gcs_pb2.PlacementGroupTableData.FromString(raw)
        made_by_an_actor = info.creator_actor_id != ray.ActorID.nil().binary()  # not the driver (Tune's trials)
        if (made_by_an_actor and info.creator_actor_dead and not info.is_detached
                and info.state != gcs_pb2.PlacementGroupTableData.REMOVED and info.creator_job_id.hex() == job):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(info.placement_group_id)))
            removed += 1
    return removed


class ReleaseOrphanedReservations(Callback):
    """Tune callback: every few seconds of the search, :func:`remove_orphaned_placement_groups`."""

    def __init__(self, every_s: float | None = 5.0) -> None:
        self.every_s, self.last = every_s, 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.every_s is None or time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        try:
            removed = remove_orphaned_placement_groups()
        except Exception as exc:  # Ray's private table changed shape: leave the reservations to Ray Train
            say(f"warning: cannot read Ray's placement-group table ({type(exc).__name__}: {exc}); "
                "stopped trials' reservations are left to Ray Train's own cleaner")
            self.every_s = None
            return
        if removed:
            say(f"released the reservations of {removed} Train run(s) whose trial had ended")
