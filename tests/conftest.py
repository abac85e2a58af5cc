"""Shared fixtures: one real Ray cluster per test session, sized for a 2-core machine."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Keep Ray's logs and our own from mixing test output with dashboards and usage prompts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one (started on first use)."""
    import ray

    from atflrec.cluster.local import own_dashboard

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=512 * 1024**2, log_to_driver=False, **own_dashboard())
    yield ray
    ray.shutdown()
