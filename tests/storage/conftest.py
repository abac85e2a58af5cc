"""Fixtures of the storage tests: one S3 server per session, a fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from s3_server import s3_bucket, s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[str]:
    """``s3://BUCKET``, a new bucket, with this process's environment pointing at the server."""
    with s3_bucket(s3_endpoint) as uri:
        yield uri
