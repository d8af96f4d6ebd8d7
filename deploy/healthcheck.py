#!/usr/bin/env python3
"""Container health probe of the trustflow image (``trustflow-healthcheck``), standard library
only (``grpc`` when installed).

    trustflow-healthcheck http URL        # exit 0 iff GET URL answers 2xx
    trustflow-healthcheck tcp HOST:PORT   # exit 0 iff a TCP connection opens
    trustflow-healthcheck grpc HOST:PORT  # exit 0 iff grpc.health.v1 answers SERVING
    trustflow-healthcheck file PATH       # exit 0 iff PATH exists and is not empty

Exit status 1 with one line on stderr saying why otherwise; ``--timeout`` (default 3 s) bounds
every probe.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request


def _host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"unhealthy: expected HOST:PORT, got {target!r}")
    return host.strip("[]"), int(port)


def probe_http(url: str, timeout: float) -> str | None:
    """None when ``GET url`` answers 2xx, else why not."""
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url!r}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (checked above)
            status = reply.status
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} unreachable: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"{url} answered HTTP {status}"


def probe_tcp(target: str, timeout: float) -> str | None:
    """None when a TCP connection to ``target`` opens, else why not."""
    try:
        with socket.create_connection(_host_port(target), timeout=timeout):
            return None
    except OSError as exc:
        return f"{target}: {exc}"


def probe_grpc(target: str, timeout: float) -> str | None:
    """None when the gRPC server at ``target`` is healthy, else why not: its standard health
    service (``grpc.health.v1.Health/Check``, the Capsule Manager's reflects its database)
    must answer SERVING; a server without that service must at least complete the HTTP/2
    handshake (channel ready). Without grpcio, a TCP connect."""
    try:
        import grpc
    except ImportError:
        return probe_tcp(target, timeout)
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        health_pb2 = health_pb2_grpc = None
    with grpc.insecure_channel(target) as channel:
        if health_pb2 is None or health_pb2_grpc is None:
            try:
                grpc.channel_ready_future(channel).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                return f"{target}: no gRPC channel within {timeout} s"
            return None
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None  # a gRPC server without the health service: it answered
            return f"{target}: {exc.code().name} {exc.details() or ''}".rstrip()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def probe_file(path: str, _timeout: float) -> str | None:
    """None when ``path`` exists and is not empty."""
    try:
        return None if os.path.getsize(path) > 0 else f"{path} is empty"
    except OSError as exc:
        return f"{path}: {exc.strerror}"


PROBES = {"http": probe_http, "tcp": probe_tcp, "grpc": probe_grpc, "file": probe_file}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(PROBES))
    parser.add_argument("target")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    problem = PROBES[args.kind](args.target, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
