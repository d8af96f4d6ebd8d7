"""The simulated platform key: where it lives, creating it once, and loading trusted keys.

The key is an ECDSA P-256 private key in an unencrypted PKCS#8 PEM file, by default
``$TRUSTFLOW_SIM_DIR/platform_key.pem``, else ``$XDG_DATA_HOME/trustflow/sim/platform_key.pem``
(``~/.local/share/...`` when ``XDG_DATA_HOME`` is unset). It is created on first use with mode
0600; concurrent first uses agree on one key.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.errors import BackendUnavailable, InvalidInput
from trustflow_core.fileio import atomic_write_bytes

SIM_DIR_ENV = "TRUSTFLOW_SIM_DIR"
KEY_FILE_NAME = "platform_key.pem"
CURVE = ec.SECP256R1


def default_key_file() -> Path:
    """The platform key file used when settings name none (read from the environment now)."""
    sim_dir = os.environ.get(SIM_DIR_ENV)
    if sim_dir:
        return Path(sim_dir) / KEY_FILE_NAME
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "trustflow" / "sim" / KEY_FILE_NAME


def load_or_create_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the platform key from ``path``, creating it (mode 0600) if the file is missing.

    Raises :class:`BackendUnavailable` when the file cannot be read, written or parsed."""
    key = _load(path, create=True)
    assert key is not None
    return key


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    """Load the platform key from ``path``; None when the file does not exist.

    Raises :class:`BackendUnavailable` when the file cannot be read or parsed."""
    return _load(path, create=False)


def _load(path: Path, *, create: bool) -> ec.EllipticCurvePrivateKey | None:
    try:
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
            pem = _create(path)
    except OSError as exc:
        raise BackendUnavailable(f"sim platform key file {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BackendUnavailable(
            f"sim platform key file {path} is not an unencrypted PEM private key"
        ) from exc
    if not _is_p256(key):
        raise BackendUnavailable(f"sim platform key file {path} does not hold a P-256 EC key")
    return key  # type: ignore[return-value]


def _create(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = ec.generate_private_key(CURVE()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    staged = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
    atomic_write_bytes(staged, pem, mode=0o600)
    try:
        os.link(staged, path)  # exclusive: whoever links first defines the key
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system: fall back to a plain atomic rename
        if not path.exists():
            os.replace(staged, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    return path.read_bytes()


def _is_p256(key: object) -> bool:
    return isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(
        key.curve, CURVE
    )


def public_key_pem(key: ec.EllipticCurvePublicKey) -> str:
    """SubjectPublicKeyInfo PEM text of ``key``."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo DER of ``key``: the identity compared against trusted keys."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_trusted_key(value: str) -> ec.EllipticCurvePublicKey:
    """Parse one ``trusted_platform_keys`` entry: PEM text, or the path of a PEM file; the PEM
    holds a public key or a private key (whose public half is trusted). Must be P-256.

    Raises :class:`InvalidInput` naming the entry."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"trusted_platform_keys entries must be PEM text or paths: {value!r}")
    if "-----BEGIN" in value:
        pem, where = value.encode(), "PEM text"
    else:
        try:
            pem, where = Path(value).expanduser().read_bytes(), value
        except OSError as exc:
            raise InvalidInput(
                f"trusted_platform_keys: cannot read {value}: {exc.strerror or exc}"
            ) from exc
    key: object
    try:
        if b"PRIVATE KEY-----" in pem:
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(f"trusted_platform_keys: {where} is not a PEM key") from exc
    if not _is_p256(key):
        raise InvalidInput(f"trusted_platform_keys: {where} is not a P-256 EC key")
    return key  # type: ignore[return-value]


def is_trusted(key: ec.EllipticCurvePublicKey, trusted: list[ec.EllipticCurvePublicKey]) -> bool:
    """Whether ``key`` equals one of ``trusted`` (by SubjectPublicKeyInfo DER)."""
    der = spki_der(key)
    return any(hmac.compare_digest(der, spki_der(t)) for t in trusted)
