"""A real S3-protocol server (moto in server mode) on 127.0.0.1 for the whole session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

pytest_plugins = ["trustflow_core.testing.fixtures"]

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server running in a thread."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(moto_endpoint: str) -> dict:
    return {
        "endpoint": moto_endpoint,
        "access_key_id": ACCESS_KEY,
        "access_key_secret": SECRET_KEY,
        "region": "us-east-1",
        "retries": 2,
        "retry_backoff": 0.01,
        "timeout": 10,
    }


@pytest.fixture
def bucket(s3_settings: dict, request: pytest.FixtureRequest) -> str:
    """A fresh bucket created through boto3 against the moto server."""
    import hashlib

    import boto3

    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    name = f"tf-{digest}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_settings["endpoint"],
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    client.close()
    return name
