"""Channel contracts: message envelopes (JWE/JWS) and transport security (mTLS).

Two ABCs under one registration hook: :class:`EnvelopeChannel` works per message,
:class:`TransportChannel` per connection.
"""

from __future__ import annotations

import abc
import functools
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from .backend import Backend
from .errors import EnvelopeError
from .keyexchange import TlsAsset

#: Who an envelope can be sealed to: an RSA key (key transport) or, where a channel profile
#: supports key agreement (the ``jwe`` channel's ``rfc`` profile: ECDH-ES+A128KW on P-256), an
#: EC key. The upstream dialect accepts RSA only.
EnvelopeRecipient = RSAPublicKey | EllipticCurvePublicKey
#: The private half that opens an envelope sealed to an :data:`EnvelopeRecipient`.
EnvelopePrivateKey = RSAPrivateKey | EllipticCurvePrivateKey


@functools.cache
def _member_names(cls: type) -> frozenset[str]:
    """The member names of an envelope dataclass (``dataclasses.fields`` costs microseconds a
    call, and every envelope is parsed with them)."""
    return frozenset(f.name for f in fields(cls))


def _from_members(cls: type, data: Mapping[str, Any], what: str) -> dict[str, str]:
    """Every member of ``cls`` from ``data``: missing and null ones empty, unknown ones and
    values other than strings refused."""
    if not isinstance(data, Mapping):
        raise EnvelopeError(f"{what} must be a JSON object")
    names = _member_names(cls)
    if not data.keys() <= names:
        raise EnvelopeError(f"{what} has unknown member(s) {sorted(set(data) - names)}")
    values = dict.fromkeys(names, "")
    for key, value in data.items():
        if value is not None:
            if not isinstance(value, str):
                raise EnvelopeError(f"{what} member {key!r} must be a string")
            values[key] = value
    return values


@dataclass(frozen=True)
class Jwe:
    """A JWE with the six members of the ``secretflowapis.v2.sdc.Jwe`` message
    (base64url strings). The same members form an RFC 7516 flattened JSON serialization."""

    protected: str
    encrypted_key: str
    iv: str
    ciphertext: str
    tag: str
    aad: str = ""

    def to_dict(self) -> dict[str, str]:
        """All six members, empty ones included (as the Envoy filter prints them)."""
        return {
            "protected": self.protected,
            "encrypted_key": self.encrypted_key,
            "iv": self.iv,
            "ciphertext": self.ciphertext,
            "tag": self.tag,
            "aad": self.aad,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Jwe:
        """Parse the JSON object form; missing members are empty, unknown ones an error."""
        return cls(**_from_members(cls, data, "JWE"))


@dataclass(frozen=True)
class Jws:
    """A JWS with the members of ``secretflowapis.v2.sdc.Jws`` (base64url strings)."""

    protected: str
    payload: str
    signature: str

    def to_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Jws:
        return cls(**_from_members(cls, data, "JWS"))


@dataclass(frozen=True)
class SealedEnvelope:
    """A sealed request and the content key the reply will be sealed with."""

    jwe: Jwe
    cek: bytes = field(repr=False)


@dataclass(frozen=True)
class OpenedEnvelope:
    """A decrypted envelope: plaintext, its protected header and the content key."""

    plaintext: bytes
    header: Mapping[str, Any]
    cek: bytes = field(repr=False)


@dataclass(frozen=True)
class VerifiedJws:
    """A verified JWS: the payload, the x5c chain (leaf first) and the protected header."""

    payload: bytes
    chain: tuple[x509.Certificate, ...]
    header: Mapping[str, Any]


class EnvelopeChannel(Backend, abc.ABC):
    """Seals and opens per-message envelopes (JWE) and signs/verifies JWS.

    Every failure (malformed member, wrong key, tampered byte, bad signature) raises
    :class:`~trustflow_core.errors.EnvelopeError` with a message naming what failed.
    """

    kind: ClassVar[str] = "channel"

    @abc.abstractmethod
    def seal(self, plaintext: bytes, recipient: EnvelopeRecipient) -> SealedEnvelope:
        """Encrypt ``plaintext`` to ``recipient`` under a fresh content key; a key type the
        profile does not support raises :class:`~trustflow_core.errors.EnvelopeError`."""

    @abc.abstractmethod
    def open(self, jwe: Jwe, private_key: EnvelopePrivateKey) -> OpenedEnvelope:
        """Decrypt a JWE addressed to ``private_key``; only the ``alg`` values that fit the
        key's type are accepted."""

    @abc.abstractmethod
    def seal_reply(self, plaintext: bytes, cek: bytes) -> Jwe:
        """Encrypt a reply under the content key of the request it answers."""

    @abc.abstractmethod
    def open_reply(self, jwe: Jwe, cek: bytes) -> bytes:
        """Decrypt a reply sealed with :meth:`seal_reply` under ``cek``."""

    @abc.abstractmethod
    def sign(
        self,
        payload: bytes,
        private_key: RSAPrivateKey,
        chain: Sequence[x509.Certificate] = (),
        *,
        claims: Mapping[str, Any] | None = None,
    ) -> Jws:
        """Sign ``payload`` (RS256); ``chain`` (leaf first, leaf = signer) goes into ``x5c``;
        ``claims`` are extra protected-header members (e.g. ``iat``/``jti``)."""

    @abc.abstractmethod
    def verify(self, jws: Jws, *, public_key: RSAPublicKey | None = None) -> VerifiedJws:
        """Verify a JWS with ``public_key`` or, when None, with the key of ``x5c[0]`` after
        checking that each certificate of ``x5c`` is signed by the next one. The caller's
        identity is the party id of the last certificate
        (:func:`trustflow_core.identity.party_id_of_chain`)."""


class TransportChannel(Backend, abc.ABC):
    """Builds TLS contexts for mutually authenticated connections from a group TLS asset.

    An unusable asset (damaged, certificate and key not matching, expired) raises
    :class:`~trustflow_core.errors.VerificationError`."""

    kind: ClassVar[str] = "channel"

    @abc.abstractmethod
    def server_ssl_context(self, asset: TlsAsset) -> ssl.SSLContext:
        """A server context that presents the asset and requires a client certificate from the
        same group."""

    @abc.abstractmethod
    def client_ssl_context(self, asset: TlsAsset) -> ssl.SSLContext:
        """A client context that presents the asset and accepts only servers of the same group."""
