"""Every error Trustflow raises on purpose.

All derive from :class:`TrustflowError` and also from the builtin exception
that matches their meaning, so callers may catch either. Backends translate
SDK errors at their boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations


class TrustflowError(Exception):
    """Base of all Trustflow errors. The message is meant for humans."""


class PluginError(TrustflowError, RuntimeError):
    """A plugin could not be loaded or registered something invalid."""


class BackendNotFound(TrustflowError, LookupError):
    """No installed backend has the requested name."""


class BackendUnavailable(TrustflowError, RuntimeError):
    """The backend exists but cannot work on this host or with this configuration."""


class UnsupportedOperation(TrustflowError, NotImplementedError):
    """The backend does not offer this operation (e.g. TLS assets from static keys)."""


class ObjectNotFound(TrustflowError, FileNotFoundError):
    """A storage object, key or resource does not exist."""


class AccessDenied(TrustflowError, PermissionError):
    """A path or URI lies outside what the backend is allowed to touch."""


class InvalidInput(TrustflowError, ValueError):
    """Input is malformed; the message names the field and what is wrong with it."""


class VerificationError(TrustflowError, ValueError):
    """Evidence, a signature or a MAC did not verify.

    ``check`` names the check that failed (for example ``"signature"``,
    ``"user_data"``, ``"simulation"``) so callers and logs can say exactly why.
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.detail = message


class EnvelopeError(TrustflowError, ValueError):
    """A JWE/JWS envelope is malformed, tampered with, or not for us."""


class CapsuleFormatError(TrustflowError, ValueError):
    """A data-capsule file is malformed, truncated, tampered with, or the key is wrong."""
