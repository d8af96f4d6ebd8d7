"""The Mirage platform key: an ECDSA P-256 key in a PEM file, created on first use.

Default file: ``$TRUSTFLOW_MIRAGE_DIR/platform_key.pem``, else
``$XDG_DATA_HOME/trustflow/mirage/platform_key.pem`` (``~/.local/share/...``). Whoever holds the
file can sign Mirage reports: the platform is simulated and proves nothing about hardware.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.errors import BackendUnavailable, InvalidInput

DIR_ENV = "TRUSTFLOW_MIRAGE_DIR"


def default_key_file() -> Path:
    """The platform key file used when settings name none (read from the environment now)."""
    directory = os.environ.get(DIR_ENV)
    if directory:
        return Path(directory) / "platform_key.pem"
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "trustflow" / "mirage" / "platform_key.pem"


def load_or_create(path: Path) -> ec.EllipticCurvePrivateKey:
    """The platform key in ``path``, created (mode 0600, exclusively) when missing.
    :class:`BackendUnavailable` when it cannot be read, written or parsed."""
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # someone else created it first: use theirs
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
        data = path.read_bytes()
    except OSError as exc:
        raise BackendUnavailable(f"mirage platform key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BackendUnavailable(f"mirage platform key {path} is not a PEM private key") from exc
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise BackendUnavailable(f"mirage platform key {path} is not a P-256 key")
    return key


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def trusted_key(entry: object) -> bytes:
    """SPKI DER of one ``trusted_platform_keys`` entry: PEM text or a PEM file path (public or
    private key). :class:`InvalidInput` naming the entry."""
    if not isinstance(entry, str) or not entry:
        raise InvalidInput(f"mirage trusted_platform_keys entries must be PEM or paths: {entry!r}")
    try:
        pem = entry.encode() if "-----BEGIN" in entry else Path(entry).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidInput(f"mirage trusted_platform_keys: {entry}: {exc.strerror}") from exc
    try:
        if b"PRIVATE KEY" in pem:
            key: object = serialization.load_pem_private_key(pem, None).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput("mirage trusted_platform_keys: an entry is not a PEM key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidInput("mirage trusted_platform_keys: an entry is not an EC key")
    return spki_der(key)
