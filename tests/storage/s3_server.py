"""The S3 server the storage tests use (moto, on 127.0.0.1) and what points a process at it: fake
credentials and AWS_ENDPOINT_URL, which pyarrow (so Ray Train and Tune too) and boto3 read."""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections.abc import Iterator

import pytest

SECRET = "atflrec-test-secret-" + uuid.uuid4().hex  # must never be written anywhere


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_environment(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "atflrec-test-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def s3_bucket(endpoint: str) -> Iterator[str]:
    """A new bucket, with this process's environment pointing at the server; yields ``s3://BUCKET``."""
    import boto3

    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_environment(endpoint).items():
            patch.setenv(key, value)
        bucket = f"atflrec-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"


def objects(uri: str) -> dict[str, bytes]:
    """Every object under ``s3://BUCKET[/PREFIX]``: key -> bytes (not the empty ``dir/`` markers
    pyarrow leaves so that a directory whose files were deleted still exists)."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            if entry["Key"].endswith("/"):
                continue
            found[entry["Key"]] = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
    return found
