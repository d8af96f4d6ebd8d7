"""At-rest sealing of data keys under the CM storage key.

* The storage key is 32 random bytes (AES-256-GCM), kept in a file (standard base64, mode
  0600) created on first start. Replicas that share a database share this key (as they share
  the CM key pair): by joining a running replica (:mod:`.replicas`) or by sharing the file; a
  mismatch is detected at start through a sealed check value.
* Each data key is sealed separately: ``AES-256-GCM(storage_key, nonce = 12 fresh random
  bytes, aad = "trustflow-cm/v1\\0" || table || "\\0" || row id)`` so a sealed value copied to
  another row (another resource_uri) does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import InvalidInput
from ...fileio import atomic_write_bytes
from ..capsule_manager_protocol.errors import CMError, Kind

KEY_BYTES = 32
NONCE_BYTES = 12
_AAD_PREFIX = b"trustflow-cm/v1\0"


def row_aad(table: str, row_id: str) -> bytes:
    return _AAD_PREFIX + table.encode() + b"\0" + row_id.encode("utf-8")


class Sealer:
    """Seals and opens small secrets bound to a row identity."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidInput(f"storage key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<storage key hidden>)"

    def seal(self, plaintext: bytes, table: str, row_id: str) -> tuple[bytes, bytes]:
        """Return ``(nonce, ciphertext||tag)``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plaintext, row_aad(table, row_id))

    def open(self, nonce: bytes, sealed: bytes, table: str, row_id: str) -> bytes:
        """Open a sealed value; raise :class:`CMError` (Data Integrity Violated) if the value,
        its nonce or its row identity were altered, or the storage key differs."""
        try:
            return self._aead.decrypt(nonce, sealed, row_aad(table, row_id))
        except (InvalidTag, ValueError):
            raise CMError(
                Kind.DATA_INTEGRITY, f"sealed {table} row {row_id!r} does not open"
            ) from None


def load_or_create_key(path: Path) -> bytes:
    """Read the storage key file, creating it (0600, atomically) when absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
        try:
            with open(path, "xb") as handle:  # never replace a key another process just wrote
                os.fchmod(handle.fileno(), 0o600)
                handle.write(base64.b64encode(key) + b"\n")
            return key
        except FileExistsError:
            pass
    text = path.read_bytes().strip()
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidInput(f"storage key file {path} is not standard base64") from None
    if len(key) != KEY_BYTES:
        raise InvalidInput(f"storage key file {path} must hold {KEY_BYTES} bytes, has {len(key)}")
    return key


def write_key(path: Path, key: bytes) -> None:
    atomic_write_bytes(path, base64.b64encode(key) + b"\n", mode=0o600)
