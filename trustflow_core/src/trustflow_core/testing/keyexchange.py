"""Conformance kit for :class:`~trustflow_core.keyexchange.KeyExchange` backends.

Subclass :class:`KeyExchangeConformance` and override its fixtures::

    class TestMyKeyExchangeConformance(KeyExchangeConformance):
        @pytest_asyncio.fixture
        async def key_exchange(self):
            async with MyKeyExchange.from_settings({...}) as kx:
                yield kx

        @pytest.fixture
        def granted_request(self): return ResourceRequest(...)

        @pytest.fixture
        def denied_or_unknown_request(self): return ResourceRequest(...)

Abstract fixtures (raise ``NotImplementedError`` until overridden):

* ``key_exchange`` — an opened backend.
* ``granted_request`` — a :class:`ResourceRequest` the backend serves (ideally with two or
  more resources, so that key order is checked).
* ``denied_or_unknown_request`` — one it refuses (policy) or does not know.

Capability flags (defaults are the strict answer):

* ``supports_tls_assets`` (True) — ``get_tls_asset`` serves the granted request; when False it
  must raise :class:`UnsupportedOperation`.
* ``serves_result_keys`` (True) — a registered result key is then served by ``get_data_keys``
  to a request like ``granted_request`` naming the result.

``result_uri`` is a fresh resource URI for result-key registration (override it when the
backend needs a particular form).
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import os
import uuid

import pytest
import pytest_asyncio

from trustflow_core.errors import AccessDenied, InvalidInput, ObjectNotFound, UnsupportedOperation
from trustflow_core.keyexchange import (
    DataKey,
    KeyExchange,
    Resource,
    ResourceRequest,
    ResultKey,
    TlsAsset,
)

REFUSED = (ObjectNotFound, AccessDenied)


def secret_forms(secret: bytes) -> list[str]:
    """Printable forms of ``secret`` that must never appear in a repr."""
    return [
        repr(secret),
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    ]


def assert_hidden(obj: object, secret: bytes) -> None:
    for text in (repr(obj), str(obj), repr([obj])):
        for form in secret_forms(secret):
            assert form not in text, f"{type(obj).__name__} shows key material: {text}"


class KeyExchangeConformance:
    """Generic behaviour every key exchange must show. See the module docstring."""

    pytestmark = [pytest.mark.asyncio]  # inherited by subclasses in other modules

    # ---- fixtures to override ---------------------------------------------------------------

    @pytest_asyncio.fixture
    async def key_exchange(self) -> KeyExchange:
        raise NotImplementedError("override the 'key_exchange' fixture: an opened backend")

    @pytest.fixture
    def granted_request(self) -> ResourceRequest:
        raise NotImplementedError("override 'granted_request': a request the backend serves")

    @pytest.fixture
    def denied_or_unknown_request(self) -> ResourceRequest:
        raise NotImplementedError("override 'denied_or_unknown_request': a refused request")

    @pytest.fixture
    def supports_tls_assets(self) -> bool:
        return True

    @pytest.fixture
    def serves_result_keys(self) -> bool:
        return True

    @pytest.fixture
    def result_uri(self) -> str:
        return f"trustflow-conformance-result-{uuid.uuid4()}"

    # ---- data keys --------------------------------------------------------------------------

    async def test_one_key_per_resource_in_order(
        self, key_exchange: KeyExchange, granted_request: ResourceRequest
    ) -> None:
        keys = await key_exchange.get_data_keys(granted_request)
        assert [k.resource_uri for k in keys] == [r.resource_uri for r in granted_request.resources]
        for key in keys:
            assert isinstance(key, DataKey)
            assert isinstance(key.key, bytes)
            assert len(key.key) in (16, 24, 32)

    async def test_reversed_request_gives_reversed_keys(
        self, key_exchange: KeyExchange, granted_request: ResourceRequest
    ) -> None:
        if len(granted_request.resources) < 2:
            pytest.skip("granted_request has fewer than two resources")
        forward = await key_exchange.get_data_keys(granted_request)
        backward_request = dataclasses.replace(
            granted_request, resources=tuple(reversed(granted_request.resources))
        )
        backward = await key_exchange.get_data_keys(backward_request)
        assert [(k.resource_uri, k.key) for k in backward] == [
            (k.resource_uri, k.key) for k in reversed(forward)
        ]

    async def test_denied_or_unknown_is_refused(
        self, key_exchange: KeyExchange, denied_or_unknown_request: ResourceRequest
    ) -> None:
        with pytest.raises(REFUSED):
            await key_exchange.get_data_keys(denied_or_unknown_request)

    async def test_no_partial_result(
        self,
        key_exchange: KeyExchange,
        granted_request: ResourceRequest,
        denied_or_unknown_request: ResourceRequest,
    ) -> None:
        for resources in (
            granted_request.resources + denied_or_unknown_request.resources,
            denied_or_unknown_request.resources + granted_request.resources,
        ):
            mixed = dataclasses.replace(granted_request, resources=resources)
            with pytest.raises(REFUSED):
                await key_exchange.get_data_keys(mixed)

    # ---- result keys ------------------------------------------------------------------------

    def _result(self, granted: ResourceRequest, uri: str, key: bytes) -> ResultKey:
        return ResultKey(
            resource_uri=uri,
            scope=granted.scope,
            key=key,
            ancestor_uuids=tuple(r.resource_uri for r in granted.resources),
        )

    def _request_for(self, granted: ResourceRequest, uri: str) -> ResourceRequest:
        return dataclasses.replace(granted, resources=(Resource(uri),))

    async def test_registered_result_key_is_served(
        self,
        key_exchange: KeyExchange,
        granted_request: ResourceRequest,
        result_uri: str,
        serves_result_keys: bool,
    ) -> None:
        key = os.urandom(32)
        await key_exchange.register_result_key(self._result(granted_request, result_uri, key))
        if not serves_result_keys:
            return
        served = await key_exchange.get_data_keys(self._request_for(granted_request, result_uri))
        assert [k.resource_uri for k in served] == [result_uri]
        assert hmac.compare_digest(served[0].key, key)

    async def test_registering_twice_is_invalid(
        self,
        key_exchange: KeyExchange,
        granted_request: ResourceRequest,
        result_uri: str,
        serves_result_keys: bool,
    ) -> None:
        first, second = os.urandom(16), os.urandom(16)
        await key_exchange.register_result_key(self._result(granted_request, result_uri, first))
        with pytest.raises(InvalidInput):
            await key_exchange.register_result_key(
                self._result(granted_request, result_uri, second)
            )
        if serves_result_keys:
            served = await key_exchange.get_data_keys(
                self._request_for(granted_request, result_uri)
            )
            assert hmac.compare_digest(served[0].key, first)

    # ---- TLS assets -------------------------------------------------------------------------

    async def test_tls_asset(
        self,
        key_exchange: KeyExchange,
        granted_request: ResourceRequest,
        supports_tls_assets: bool,
    ) -> None:
        if not supports_tls_assets:
            with pytest.raises(UnsupportedOperation):
                await key_exchange.get_tls_asset(granted_request)
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        asset = await key_exchange.get_tls_asset(granted_request)
        assert isinstance(asset, TlsAsset)
        assert b"-----BEGIN CERTIFICATE-----" in asset.cert_pem
        assert b"-----BEGIN PRIVATE KEY-----" in asset.private_key_pem  # PKCS#8
        leaf = x509.load_pem_x509_certificates(asset.cert_pem)[0]
        private_key = serialization.load_pem_private_key(asset.private_key_pem, password=None)
        spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        assert leaf.public_key().public_bytes(*spki) == private_key.public_key().public_bytes(*spki)
        key_body = b"".join(asset.private_key_pem.strip().splitlines()[1:-1]).decode()
        for text in (repr(asset), str(asset), repr([asset])):
            assert key_body[:24] not in text, f"TlsAsset shows its private key: {text}"

    async def test_tls_asset_refused_or_unsupported(
        self,
        key_exchange: KeyExchange,
        denied_or_unknown_request: ResourceRequest,
        supports_tls_assets: bool,
    ) -> None:
        expected = REFUSED if supports_tls_assets else UnsupportedOperation
        with pytest.raises(expected):
            await key_exchange.get_tls_asset(denied_or_unknown_request)

    # ---- secrets stay out of reprs ----------------------------------------------------------

    async def test_reprs_hide_key_material(
        self, key_exchange: KeyExchange, granted_request: ResourceRequest, result_uri: str
    ) -> None:
        for key in await key_exchange.get_data_keys(granted_request):
            assert_hidden(key, key.key)
            assert key.resource_uri in repr(key)
        result = self._result(granted_request, result_uri, os.urandom(32))
        assert_hidden(result, result.key)
