"""Conformance kit for :class:`~trustflow_core.channel.TransportChannel` backends.

Subclass :class:`TransportChannelConformance` in a plugin's tests and override ``channel``::

    class TestMtlsConformance(TransportChannelConformance):
        @pytest.fixture
        def channel(self):
            return MtlsChannel.from_settings({})

Every test runs over real loopback sockets (asyncio streams on 127.0.0.1, port 0) with the
contexts the backend builds. The asset fixtures default to assets issued by
:func:`trustflow_core.tls_asset.issue_group_asset`; override them to test another format:

* ``member_assets`` — two members (bob, carol) of one group;
* ``other_group_asset`` — a member of a group derived from another data key;
* ``outsider_asset`` — a self-made CA that copies the group CA's subject name, signing a leaf
  that copies carol's subject: what someone without the data key can produce;
* ``expired_member_asset`` — a member of the group whose leaf has expired (a member whose
  grant was deleted and who could not refresh).

Contract checked beyond the ABC docstrings: the contexts require TLS 1.2+, a client
certificate and a peer chain to the group anchor, do not check host names, and building a
context from a damaged asset raises :class:`~trustflow_core.errors.VerificationError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import os
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..channel import TransportChannel
from ..errors import VerificationError
from ..keyexchange import TlsAsset
from ..tls_asset import issue_group_asset

TIMEOUT = 5.0
SCOPE, DATA_UUID, OP_NAME = "default", "breast_cancer_alice", "interact"


# ---- assets ----------------------------------------------------------------------------------


@functools.cache
def member_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A throwaway attested-app key per label (once per test session)."""
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def data_key(label: str) -> bytes:
    """A random 16-byte data key per label (once per test session)."""
    return os.urandom(16)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def group_asset(
    member: str, *, data: str = "alice", now: datetime.datetime | None = None
) -> TlsAsset:
    """The asset of ``member`` in the ``interact`` group of data key ``data``."""
    return issue_group_asset(
        data_key(data),
        scope=SCOPE,
        data_uuid=DATA_UUID,
        op_name=OP_NAME,
        member_public_key=member_key(member).public_key(),
        now=now or utcnow(),
    )


def impostor_asset(copy_of: TlsAsset) -> TlsAsset:
    """A self-made CA + leaf with exactly the subject names of ``copy_of``'s CA and leaf."""
    leaf, ca = x509.load_pem_x509_certificates(copy_of.cert_pem)
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )

    def rebuild(cert: x509.Certificate, public_key: ec.EllipticCurvePublicKey) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(cert.subject)
            .issuer_name(cert.issuer)
            .public_key(public_key)
            .serial_number(cert.serial_number)
            .not_valid_before(cert.not_valid_before_utc)
            .not_valid_after(cert.not_valid_after_utc)
        )
        for ext in cert.extensions:
            if isinstance(ext.value, x509.SubjectKeyIdentifier):
                builder = builder.add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(public_key), ext.critical
                )
            elif isinstance(ext.value, x509.AuthorityKeyIdentifier):
                builder = builder.add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    ext.critical,
                )
            else:
                builder = builder.add_extension(ext.value, ext.critical)
        return builder.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    return TlsAsset(
        cert_pem=rebuild(leaf, leaf_key.public_key()).public_bytes(pem)
        + rebuild(ca, ca_key.public_key()).public_bytes(pem),
        private_key_pem=leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def raw_context(
    asset: TlsAsset | None,
    *,
    server: bool,
    trust: TlsAsset,
    tmp: Path,
) -> ssl.SSLContext:
    """A context built with plain ``ssl`` and no asset checks (a misbehaving peer): presents
    ``asset`` (nothing when None) and trusts the last certificate of ``trust``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    if not server:
        ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if asset is not None:
        stem = f"raw-{os.urandom(4).hex()}"
        cert, key = tmp / f"{stem}.crt", tmp / f"{stem}.key"
        cert.write_bytes(asset.cert_pem)
        key.write_bytes(asset.private_key_pem)
        ctx.load_cert_chain(cert, key)
    anchor = x509.load_pem_x509_certificates(trust.cert_pem)[-1]
    ctx.load_verify_locations(cadata=anchor.public_bytes(serialization.Encoding.PEM).decode())
    return ctx


# ---- loopback harness ----------------------------------------------------------------------------


@dataclass
class EchoServer:
    """A TLS echo server on 127.0.0.1; ``accepted`` counts connections that reached the app
    (i.e. completed the TLS handshake)."""

    server: asyncio.Server
    port: int
    accepted: int = 0
    peer_certs: list[bytes | None] = field(default_factory=list)


#: The ``start_echo_server`` fixture: start an echo server with this server context.
StartEcho = Callable[[ssl.SSLContext], Awaitable[EchoServer]]


async def connect(
    port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="", ssl_handshake_timeout=TIMEOUT
        ),
        TIMEOUT,
    )


async def round_trip(port: int, ctx: ssl.SSLContext, message: bytes) -> tuple[bytes, bytes]:
    """Send ``message``, read it back; returns (echo, server certificate DER)."""
    reader, writer = await connect(port, ctx)
    try:
        writer.write(message)
        await writer.drain()
        echo = await asyncio.wait_for(reader.readexactly(len(message)), TIMEOUT)
        return echo, writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with _suppress_close_errors():
            await writer.wait_closed()


class _suppress_close_errors:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, (ConnectionError, ssl.SSLError))


async def assert_refused(server: EchoServer, ctx: ssl.SSLContext) -> BaseException | None:
    """Connect with ``ctx`` and require the connection to fail before the app sees it: the
    handshake fails on the client, or (TLS 1.3, where the client finishes first) the first
    read fails or hits EOF; in both cases the server's app never ran. Returns the client
    error (None for a plain EOF)."""
    error: BaseException | None = None
    try:
        reader, writer = await connect(server.port, ctx)
    except (ssl.SSLError, ConnectionError) as exc:
        error = exc
    else:
        try:
            writer.write(b"hello?")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(100), TIMEOUT)
            assert data == b"", f"a refused peer got data back: {data!r}"
        except (ssl.SSLError, ConnectionError) as exc:
            error = exc
        finally:
            writer.close()
            with _suppress_close_errors():
                await writer.wait_closed()
    await asyncio.sleep(0.05)
    assert server.accepted == 0, "the server app accepted a connection that must be refused"
    return error


def client_hello(version: int) -> bytes:
    """A minimal ClientHello record offering ``version`` (0x0300 SSLv3 .. 0x0303 TLS 1.2),
    with ECDHE AEAD and CBC suites, P-256/X25519 and ECDSA/RSA signature algorithms, and no
    supported_versions extension (so it cannot negotiate TLS 1.3)."""
    suites = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xC009, 0xC013, 0xC00A, 0xC014, 0x002F]
    suite_bytes = b"".join(struct.pack(">H", s) for s in suites)

    def ext(kind: int, body: bytes) -> bytes:
        return struct.pack(">HH", kind, len(body)) + body

    exts = (
        ext(0x000A, struct.pack(">HHH", 4, 0x0017, 0x001D))  # supported_groups
        + ext(0x000B, b"\x01\x00")  # ec_point_formats: uncompressed
        + ext(0x000D, struct.pack(">HHHHH", 8, 0x0403, 0x0804, 0x0401, 0x0503))  # sig algs
    )
    body = (
        struct.pack(">H", version)
        + os.urandom(32)
        + b"\x00"
        + struct.pack(">H", len(suite_bytes))
        + suite_bytes
        + b"\x01\x00"
        + struct.pack(">H", len(exts))
        + exts
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def server_hello_record(version: int) -> bytes:
    """A ServerHello record selecting ``version`` and ECDHE-RSA-AES128-SHA, no extensions."""
    body = (
        struct.pack(">H", version) + os.urandom(32) + b"\x00" + struct.pack(">H", 0xC013) + b"\x00"
    )
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16" + struct.pack(">HH", version, len(handshake)) + handshake


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes over plain TCP and return the first reply bytes (b"" on EOF)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(5), TIMEOUT)
        except ConnectionError:
            return b""
    finally:
        writer.close()
        with _suppress_close_errors():
            await writer.wait_closed()


def flip_pem_byte(pem: bytes, block: int) -> bytes:
    """Flip one base64 character in the middle of PEM block ``block`` (0-based)."""
    starts = [i for i in range(len(pem)) if pem.startswith(b"-----BEGIN", i)]
    start = pem.index(b"\n", starts[block]) + 1
    end = pem.index(b"-----END", start)
    middle = (start + end) // 2
    while pem[middle : middle + 1] in (b"\n", b"="):
        middle += 1
    data = bytearray(pem)
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    return bytes(data)


# ---- the kit ----------------------------------------------------------------------------------


class TransportChannelConformance:
    """Tests every :class:`~trustflow_core.channel.TransportChannel` must pass."""

    @pytest.fixture
    def channel(self) -> TransportChannel:
        raise NotImplementedError("override the `channel` fixture")

    @pytest_asyncio.fixture
    async def start_echo_server(
        self,
    ) -> AsyncIterator[StartEcho]:
        servers: list[EchoServer] = []

        async def start(ctx: ssl.SSLContext) -> EchoServer:
            state: EchoServer

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                state.accepted += 1
                ssl_object = writer.get_extra_info("ssl_object")
                state.peer_certs.append(ssl_object.getpeercert(binary_form=True))
                try:
                    while data := await reader.read(65536):
                        writer.write(data)
                        await writer.drain()
                except (ConnectionError, ssl.SSLError):
                    pass
                finally:
                    writer.close()

            server = await asyncio.start_server(
                handle, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=TIMEOUT
            )
            state = EchoServer(server, server.sockets[0].getsockname()[1])
            servers.append(state)
            return state

        yield start
        for state in servers:
            state.server.close()
            await state.server.wait_closed()

    @pytest.fixture
    def member_assets(self) -> tuple[TlsAsset, TlsAsset]:
        return group_asset("bob"), group_asset("carol")

    @pytest.fixture
    def other_group_asset(self) -> TlsAsset:
        return group_asset("dave", data="another data key")

    @pytest.fixture
    def outsider_asset(self, member_assets: tuple[TlsAsset, TlsAsset]) -> TlsAsset:
        return impostor_asset(member_assets[1])

    @pytest.fixture
    def expired_member_asset(self) -> TlsAsset:
        return group_asset("eve", now=utcnow() - datetime.timedelta(days=30))

    # -- members ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_members_talk_both_ways(
        self,
        channel: TransportChannel,
        member_assets: tuple[TlsAsset, TlsAsset],
        start_echo_server: StartEcho,
    ) -> None:
        for server_asset, client_asset in (member_assets, member_assets[::-1]):
            server = await start_echo_server(channel.server_ssl_context(server_asset))
            client_ctx = channel.client_ssl_context(client_asset)
            message = os.urandom(100_000)
            echo, server_cert = await round_trip(server.port, client_ctx, message)
            assert echo == message
            presented = x509.load_pem_x509_certificates(server_asset.cert_pem)[0]
            assert server_cert == presented.public_bytes(serialization.Encoding.DER)
            client_leaf = x509.load_pem_x509_certificates(client_asset.cert_pem)[0]
            assert server.peer_certs == [client_leaf.public_bytes(serialization.Encoding.DER)]

    @pytest.mark.asyncio
    async def test_many_connections_share_one_server_context(
        self,
        channel: TransportChannel,
        member_assets: tuple[TlsAsset, TlsAsset],
        start_echo_server: StartEcho,
    ) -> None:
        server = await start_echo_server(channel.server_ssl_context(member_assets[0]))
        client_ctx = channel.client_ssl_context(member_assets[1])
        results = await asyncio.gather(
            *(round_trip(server.port, client_ctx, b"n%d" % i) for i in range(8))
        )
        assert [echo for echo, _ in results] == [b"n%d" % i for i in range(8)]
        assert server.accepted == 8

    # -- who is refused -------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("kind", ["outsider", "other_group", "expired_member"])
    async def test_server_refuses_non_member_client(
        self,
        kind: str,
        channel: TransportChannel,
        member_assets: tuple[TlsAsset, TlsAsset],
        outsider_asset: TlsAsset,
        other_group_asset: TlsAsset,
        expired_member_asset: TlsAsset,
        start_echo_server: StartEcho,
        tmp_path: Path,
    ) -> None:
        server = await start_echo_server(channel.server_ssl_context(member_assets[0]))
        if kind == "expired_member":  # cannot go through the channel: it refuses the asset
            client_ctx = raw_context(
                expired_member_asset, server=False, trust=member_assets[1], tmp=tmp_path
            )
        else:
            asset = outsider_asset if kind == "outsider" else other_group_asset
            client_ctx = channel.client_ssl_context(asset)
            # the non-member would have trusted the member server if it trusted our CA:
            # refusal must come from the server's check of the client certificate
            client_ctx.load_verify_locations(
                cadata=x509.load_pem_x509_certificates(member_assets[0].cert_pem)[-1]
                .public_bytes(serialization.Encoding.PEM)
                .decode()
            )
        await assert_refused(server, client_ctx)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("kind", ["outsider", "other_group", "expired_member"])
    async def test_client_refuses_non_member_server(
        self,
        kind: str,
        channel: TransportChannel,
        member_assets: tuple[TlsAsset, TlsAsset],
        outsider_asset: TlsAsset,
        other_group_asset: TlsAsset,
        expired_member_asset: TlsAsset,
        start_echo_server: StartEcho,
        tmp_path: Path,
    ) -> None:
        if kind == "expired_member":
            server_ctx = raw_context(
                expired_member_asset, server=True, trust=member_assets[0], tmp=tmp_path
            )
        else:
            asset = outsider_asset if kind == "outsider" else other_group_asset
            server_ctx = channel.server_ssl_context(asset)
            server_ctx.load_verify_locations(  # the fake server would accept the member
                cadata=x509.load_pem_x509_certificates(member_assets[0].cert_pem)[-1]
                .public_bytes(serialization.Encoding.PEM)
                .decode()
            )
        server = await start_echo_server(server_ctx)
        try:
            _, writer = await connect(server.port, channel.client_ssl_context(member_assets[0]))
        except ssl.SSLCertVerificationError:
            pass
        else:
            writer.close()
            with _suppress_close_errors():
                await writer.wait_closed()
            pytest.fail(f"a member client accepted a {kind} server")
        assert server.accepted == 0

    @pytest.mark.asyncio
    async def test_server_refuses_client_without_certificate(
        self,
        channel: TransportChannel,
        member_assets: tuple[TlsAsset, TlsAsset],
        start_echo_server: StartEcho,
        tmp_path: Path,
    ) -> None:
        server = await start_echo_server(channel.server_ssl_context(member_assets[0]))
        client_ctx = raw_context(None, server=False, trust=member_assets[0], tmp=tmp_path)
        await assert_refused(server, client_ctx)
        # control: the same raw client with a member certificate gets through
        member_ctx = raw_context(
            member_assets[1], server=False, trust=member_assets[0], tmp=tmp_path
        )
        echo, _ = await round_trip(server.port, member_ctx, b"control")
        assert echo == b"control"

    @pytest.mark.asyncio
    @pytest.mark.parametrize("version", [0x0300, 0x0301, 0x0302])
    async def test_server_refuses_tls_below_1_2(
        self,
        version: int,
        channel: TransportChannel,
        member_assets: tuple[TlsAsset, TlsAsset],
        start_echo_server: StartEcho,
    ) -> None:
        ctx = channel.server_ssl_context(member_assets[0])
        server = await start_echo_server(ctx)
        reply = await raw_exchange(server.port, client_hello(version))
        # no ServerHello: EOF or an alert record (content type 21)
        assert reply == b"" or reply[0] == 0x15, f"server answered {reply.hex()} to {version:#06x}"
        # control: the same hello offering TLS 1.2 gets a handshake record (ServerHello),
        # unless the backend is configured for TLS 1.3 only
        reply = await raw_exchange(server.port, client_hello(0x0303))
        if ctx.minimum_version <= ssl.TLSVersion.TLSv1_2:
            assert reply[:1] == b"\x16", f"server answered {reply.hex()} to TLS 1.2"
        else:
            assert reply == b"" or reply[0] == 0x15, f"server answered {reply.hex()} to TLS 1.2"
        assert server.accepted == 0

    @pytest.mark.asyncio
    @pytest.mark.parametrize("version", [0x0301, 0x0302])
    async def test_client_refuses_server_below_tls_1_2(
        self, version: int, channel: TransportChannel, member_assets: tuple[TlsAsset, TlsAsset]
    ) -> None:
        received: list[bytes] = []
        done = asyncio.Event()

        async def fake_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(65536)  # the ClientHello
                writer.write(server_hello_record(version))
                await writer.drain()
                received.append(await asyncio.wait_for(reader.read(100), TIMEOUT))
            except ConnectionError:
                received.append(b"")
            finally:
                writer.close()
                done.set()

        server = await asyncio.start_server(fake_server, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(ssl.SSLError) as refused:
                await connect(port, channel.client_ssl_context(member_assets[0]))
            reason = str(getattr(refused.value, "reason", "") or refused.value).upper()
            assert "PROTOCOL" in reason or "VERSION" in reason, refused.value
            await asyncio.wait_for(done.wait(), TIMEOUT)
        finally:
            server.close()
            await server.wait_closed()
        # the client answered with an alert (or just hung up), never with key exchange data
        assert received and (received[0] == b"" or received[0][0] == 0x15), received

    # -- contexts and assets --------------------------------------------------------------------

    def test_contexts_require_modern_tls_and_certificates(
        self, channel: TransportChannel, member_assets: tuple[TlsAsset, TlsAsset]
    ) -> None:
        server = channel.server_ssl_context(member_assets[0])
        client = channel.client_ssl_context(member_assets[0])
        for ctx in (server, client):
            assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
            assert ctx.verify_mode == ssl.CERT_REQUIRED
            assert ctx.check_hostname is False
            anchors = ctx.get_ca_certs(binary_form=True)
            group_ca = x509.load_pem_x509_certificates(member_assets[0].cert_pem)[-1]
            assert anchors == [group_ca.public_bytes(serialization.Encoding.DER)]

    @pytest.mark.parametrize("block", [0, -1])
    @pytest.mark.parametrize("side", ["server", "client"])
    def test_tampered_certificate_is_refused(
        self,
        block: int,
        side: str,
        channel: TransportChannel,
        member_assets: tuple[TlsAsset, TlsAsset],
    ) -> None:
        asset = member_assets[0]
        blocks = asset.cert_pem.count(b"-----BEGIN")
        tampered = dataclasses.replace(
            asset, cert_pem=flip_pem_byte(asset.cert_pem, block % blocks)
        )
        build = channel.server_ssl_context if side == "server" else channel.client_ssl_context
        with pytest.raises(VerificationError):
            build(tampered)

    def test_key_of_another_member_is_refused(
        self, channel: TransportChannel, member_assets: tuple[TlsAsset, TlsAsset]
    ) -> None:
        mixed = TlsAsset(member_assets[0].cert_pem, member_assets[1].private_key_pem)
        with pytest.raises(VerificationError, match="key"):
            channel.server_ssl_context(mixed)
        with pytest.raises(VerificationError, match="key"):
            channel.client_ssl_context(mixed)

    def test_expired_asset_is_refused(
        self, channel: TransportChannel, expired_member_asset: TlsAsset
    ) -> None:
        with pytest.raises(VerificationError, match="expired"):
            channel.server_ssl_context(expired_member_asset)
        with pytest.raises(VerificationError, match="expired"):
            channel.client_ssl_context(expired_member_asset)
