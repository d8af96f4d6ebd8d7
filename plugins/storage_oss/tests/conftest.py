"""A real S3-protocol server (moto in server mode) on 127.0.0.1 for the whole session."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest_plugins = ["trustflow_core.testing.fixtures"]

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def oss_signatures_shown_as_sigv2(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI wrapper for moto, which routes a request by the SigV4 credential scope it parses
    out of ``Authorization``: an OSS signature (``OSS <id>:<base64>``) whose base64 happens to
    hold four ``/`` parses as a scope naming no service, and moto answers 500 (seen in CI, one
    request in a few hundred). moto checks no signatures, so OSS-signed requests reach it as
    SigV2-signed ones (``AWS <id>:<signature without '/'>``), which it serves as S3."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth.startswith("OSS "):
            environ["HTTP_AUTHORIZATION"] = "AWS " + auth[4:].replace("/", "_")
        return app(environ, start_response)

    return wrapped


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server running in a thread (it serves the
    S3 clients and, as far as moto can, the OSS ones)."""
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    app = oss_signatures_shown_as_sigv2(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


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
