"""The Capsule Manager's in-band error model (docs/compat.md#cm-status-codes).

Every refusal travels as ``status{code, message}`` with gRPC status OK. The code follows the
upstream mapping (``Unknown->2, InvalidArgument->3, PermissionDenied->7, UnsupportedErr->12``,
everything else 13); the message is ``err code: <kind text>; err detail: <detail>; `` so that
clients can still tell "Not found" from "Already existed" although both are 13.
"""

from __future__ import annotations

import enum

from ...errors import TrustflowError


class Kind(enum.Enum):
    """Error kinds: ``(status code, kind text)``."""

    UNKNOWN = (2, "Unknown error")
    INVALID_ARGUMENT = (3, "Invalid Argument")
    PERMISSION_DENIED = (7, "Permission denied")
    UNSUPPORTED = (12, "Unsupported error")
    INTERNAL = (13, "Internal error")
    CRYPTO = (13, "Crypto error")
    ASSERT = (13, "Assert err")
    DECODE = (13, "Decode error")
    NOT_FOUND = (13, "Not found")
    ALREADY_EXISTS = (13, "Already existed")
    DATA_INTEGRITY = (13, "Data Integrity Violated")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


class CMError(TrustflowError):
    """A refusal with its kind and a detail meant for the client (never secrets)."""

    def __init__(self, kind: Kind, detail: str) -> None:
        super().__init__(f"{kind.text}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def code(self) -> int:
        return self.kind.code

    @property
    def message(self) -> str:
        """The upstream message layout (without the Rust source location)."""
        return format_message(self.kind, self.detail)


def format_message(kind: Kind, detail: str) -> str:
    return f"err code: {kind.text}; err detail: {detail}; "


def kind_of_message(message: str) -> Kind | None:
    """The kind named by an upstream-layout message, or None (client side)."""
    prefix = "err code: "
    if not message.startswith(prefix):
        return None
    text = message[len(prefix) :].split(";", 1)[0]
    for kind in Kind:
        if kind.text == text:
            return kind
    return None
