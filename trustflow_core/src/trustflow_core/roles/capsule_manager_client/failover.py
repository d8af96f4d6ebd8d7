"""Failover over several Capsule Manager replicas (docs/failover.md).

A client is given one or more endpoints: a list, or one string ``"h1:p1,h2:p2"``. A
``host:port`` whose host name resolves to several addresses counts as one endpoint per
address (in the resolver's order); TLS still checks the certificate against the name.
:class:`Failover` keeps one gRPC channel per address and sends each call to the address
that answered last; when the call fails with ``UNAVAILABLE`` (connection refused, reset,
closed: the replica is down or went down mid-call) or ``DEADLINE_EXCEEDED`` (no answer within
the per-attempt timeout: a hung or cut-off replica), the SAME request message is sent to the
next address, each address at most once per round, in at most :data:`ROUNDS` rounds with
:data:`BACKOFF` seconds (doubling) between rounds and a fresh name resolution. Any other
outcome, an in-band refusal included, is the answer and is not retried.

Re-sending is safe for every RPC of the CM because the request bytes are identical (same JWE,
same JWS, same ``iat``/``jti``): reads and key releases change nothing, owner mutations are
recorded by their envelope digest in the transaction of their effect (an identical re-send
is answered as the first time without a second effect), result registrations compare the
stored registration, and a re-sent certificate registration answered "already existed" is the
first attempt's success (the client decides that: the party id is derived from the key). A
single address is tried once, exactly as a client of one CM always was.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ...errors import BackendUnavailable, InvalidInput
from .._net import grpc_failure, grpc_reason

T = TypeVar("T")

#: gRPC status codes after which the request goes to another replica.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: Rounds over all addresses when there is more than one (a single address: one attempt).
ROUNDS = 2
#: Seconds to wait before the second round (doubled before each further one).
BACKOFF = 0.2


def parse_endpoints(
    spec: str | Sequence[str], what: str = "capsule manager endpoint"
) -> tuple[str, ...]:
    """The endpoints of ``spec`` (a string, comma-separated, or a list of such strings), in
    order, stripped, without repeats. An empty entry, or none at all: :class:`InvalidInput`
    naming ``what``."""
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    out: list[str] = []
    for part in parts:
        item = part.strip()
        if not item:
            raise InvalidInput(f"{what}: empty entry in {spec!r} (give host:port[,host:port...])")
        if item not in out:
            out.append(item)
    if not out:
        raise InvalidInput(f"{what}: no endpoint given")
    return tuple(out)


def host_port(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of a plain ``host:port`` / ``[v6]:port`` target; None for anything
    else (a gRPC URI such as ``dns:///...`` or ``unix:...``, no port), which is dialled as
    given."""
    if "/" in target or target.startswith(("unix:", "ipv4:", "ipv6:", "dns:")):
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    return host, int(port)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Address:
    """One replica to dial: the gRPC ``target``, the endpoint it came from (what errors and
    the TLS name check use) and whether it is one of several addresses of that name."""

    target: str
    endpoint: str
    resolved: bool = False

    def __str__(self) -> str:
        if not self.resolved:
            return self.endpoint
        return f"{self.endpoint} ({self.target.partition(':')[2].rpartition(':')[0]})"


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` (the system resolver), in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def expand(endpoints: Sequence[str], resolve: Resolver = system_resolver) -> list[Address]:
    """One :class:`Address` per endpoint, or per address of an endpoint whose host name
    resolves to several. A name that does not resolve, or to one address, is kept as is (gRPC
    resolves it and names it in its error)."""
    out: list[Address] = []
    for endpoint in endpoints:
        hp = host_port(endpoint)
        addresses: list[str] = []
        if hp is not None and not _literal(hp[0]):
            try:
                addresses = await resolve(*hp)
            except OSError:
                addresses = []
        if hp is None or len(addresses) < 2:
            out.append(Address(endpoint, endpoint))
            continue
        for ip in addresses:
            target = f"ipv6:[{ip}]:{hp[1]}" if ":" in ip else f"ipv4:{ip}:{hp[1]}"
            out.append(Address(target, endpoint, resolved=True))
    return list({a.target: a for a in out}.values())


class AllReplicasFailed(BackendUnavailable):
    """No address answered; the message names every one tried and why."""


class Failover:
    """Per-address channels and the failover loop (see the module doc). ``credentials``:
    TLS for every address (None: plaintext); ``options``: gRPC channel arguments of every
    channel; ``resolve``: the name resolver (tests give their own)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        rounds: int = ROUNDS,
        backoff: float = BACKOFF,
        resolve: Resolver = system_resolver,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self._credentials = credentials
        self._options = list(options)
        self._rounds = rounds
        self._backoff = backoff
        self._resolve = resolve
        self._addresses: list[Address] | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._preferred: str | None = None  # the target that answered last

    def _channel(self, address: Address) -> grpc.aio.Channel:
        channel = self._channels.get(address.target)
        if channel is None:
            options = list(self._options)
            if address.resolved:
                hp = host_port(address.endpoint)
                assert hp is not None
                options.append(("grpc.default_authority", address.endpoint))
                if self._credentials is not None:
                    options.append(("grpc.ssl_target_name_override", hp[0]))
            channel = (
                grpc.aio.secure_channel(address.target, self._credentials, options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(address.target, options)
            )
            self._channels[address.target] = channel
        return channel

    def current_channel(self) -> grpc.aio.Channel:
        """The channel of the address that answered last (before any call: the first
        endpoint, dialled as given)."""
        if self._addresses is not None:
            for address in self._addresses:
                if address.target == self._preferred:
                    return self._channel(address)
            return self._channel(self._addresses[0])
        return self._channel(Address(self.endpoints[0], self.endpoints[0]))

    async def addresses(self, *, refresh: bool = False) -> list[Address]:
        if self._addresses is None or refresh:
            self._addresses = await expand(self.endpoints, self._resolve)
        return self._addresses

    async def call(
        self,
        method: str,
        invoke: Callable[[grpc.aio.Channel], Awaitable[T]],
        on_failover: Callable[[], None] = lambda: None,
    ) -> T:
        """``invoke(channel)`` on the preferred address, then the others on a retryable gRPC
        error (each time the same request: ``invoke`` must send identical bytes). Returns the
        first answer; a non-retryable :class:`grpc.aio.AioRpcError` propagates; when every
        address failed, :class:`AllReplicasFailed` (a single address: its usual one-line
        error) names each address and its failure. ``on_failover`` runs before each attempt
        on another address."""
        failures: dict[str, tuple[Address, grpc.aio.AioRpcError]] = {}
        attempts = 0
        addresses = await self.addresses()
        rounds = self._rounds if len(addresses) > 1 else 1
        for round_no in range(rounds):
            if round_no:
                await asyncio.sleep(self._backoff * 2 ** (round_no - 1))
                addresses = await self.addresses(refresh=True)
            start = next((i for i, a in enumerate(addresses) if a.target == self._preferred), 0)
            for address in addresses[start:] + addresses[:start]:
                if attempts:
                    on_failover()
                attempts += 1
                try:
                    result = await invoke(self._channel(address))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in RETRYABLE:
                        raise
                    failures[address.target] = (address, exc)
                    continue
                self._preferred = address.target
                return result
        raise self._failure(method, list(failures.values()))

    def _failure(
        self, method: str, failures: list[tuple[Address, grpc.aio.AioRpcError]]
    ) -> BackendUnavailable:
        if len(failures) == 1:
            address, exc = failures[0]
            return BackendUnavailable(
                grpc_failure(str(address), method, exc.code().name, exc.details())
            )
        reasons = "; ".join(
            f"{address}: {grpc_reason(exc.code().name, exc.details())}" for address, exc in failures
        )
        return AllReplicasFailed(
            f"no capsule manager replica answered {method} ({len(failures)} tried): {reasons}"
        )

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
