"""Fixtures for the cluster tests: a separate real Ray head (see ray_head.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray_head import Head, start_head


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    yield from start_head()
