"""``SimVerifier``: checks SIM reports (see :mod:`.report`) against trusted platform keys."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.attestation import Attributes, Evidence, Report, Verifier
from trustflow_core.errors import InvalidInput, VerificationError
from trustflow_core.settings_schema import Node
from trustflow_core.utc_text import utc_seconds_text
from typing_extensions import Self

from . import keys
from .report import PLATFORM, SimBody, open_report

#: How far a report's timestamp may lie in the verifier's future.
MAX_CLOCK_SKEW = timedelta(minutes=5)


#: How many verified reports :func:`_verified_report` keeps.
VERIFIED_REPORTS = 256


@functools.lru_cache(maxsize=VERIFIED_REPORTS)
def _verified_report(json_report: str) -> tuple[SimBody, bytes, str]:
    """:func:`~.report.open_report` of ``json_report`` (format and the signature by the key
    the report names), with that key's SubjectPublicKeyInfo DER and its SHA-256 (hex).

    Cached by the report's full text: the same text always opens to the same immutable body
    (a report that fails raises, and nothing is cached). Whether the key is trusted and
    whether the timestamp is acceptable are checked by the caller on every use."""
    body = open_report(json_report)
    der = keys.spki_der(body.public_key)
    return body, der, hashlib.sha256(der).hexdigest()


class SimVerifier(Verifier):
    """Simulated verifier (``name = "sim"``, platform ``"SIM"``).

    A report is accepted when its format is exact, its body is signed by the platform key it
    names, that key is trusted, and its timestamp is not in the future (beyond
    :data:`MAX_CLOCK_SKEW`) nor older than ``max_age_seconds``. The core then applies the
    simulation rule and the policy.

    Settings (all optional):

    * ``trusted_platform_keys`` -- list of PEM texts or PEM file paths (public or private keys);
    * ``platform_key_file`` -- when ``trusted_platform_keys`` is not given, trust this key
      file's public key (default :func:`trustflow_tee_sim.keys.default_key_file`, read again
      whenever the file changes; it is never created by the verifier);
    * ``max_age_seconds`` -- reject reports older than this (default: no limit).
    """

    name: ClassVar[str] = "sim"
    platform: ClassVar[str] = PLATFORM
    simulated: ClassVar[bool] = True
    #: Roles use ``sim`` when configuration names no TEE (as upstream defaults to ``--plat sim``).
    development_default: ClassVar[bool] = True
    #: Our extension: policies see the TDX-like triple ``r.env.tee.sim.{mr_plat, mr_boot, mr_ta}``.
    tee_name: ClassVar[str] = "sim"
    identity_fields: ClassVar[Mapping[str, str]] = {
        "mr_plat": "hex_platform_measurement",
        "mr_boot": "hex_boot_measurement",
        "mr_ta": "hex_ta_measurement",
    }
    debug_flag: ClassVar[bool] = True

    def __init__(
        self,
        trusted_keys: list[ec.EllipticCurvePublicKey] | None = None,
        *,
        key_file: Path | None = None,
        max_age: timedelta | None = None,
    ) -> None:
        if trusted_keys is not None and key_file is not None:
            raise InvalidInput("sim verifier: give trusted_platform_keys or platform_key_file")
        self.trusted_keys = trusted_keys
        self.key_file = key_file or keys.default_key_file()
        self.max_age = max_age
        self._file_key: tuple[tuple[int, int, int], ec.EllipticCurvePublicKey] | None = None
        self._ders: tuple[tuple[ec.EllipticCurvePublicKey, ...], list[bytes]] | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "sim verifier settings").mapping(
            {"trusted_platform_keys", "platform_key_file", "max_age_seconds"}
        )
        trusted = None
        if root.get("trusted_platform_keys").present:
            trusted = [
                entry.build(keys.load_trusted_key)
                for entry in root.get("trusted_platform_keys").elements()
            ]
        max_age = root.get("max_age_seconds").number(None, zero_ok=False)
        return cls(
            trusted,
            key_file=root.get("platform_key_file").path(None),
            max_age=None if max_age is None else timedelta(seconds=max_age),
        )

    def _trusted(self) -> list[ec.EllipticCurvePublicKey]:
        """The trusted keys; the key file is parsed again only when its stat changes."""
        if self.trusted_keys is not None:
            return self.trusted_keys
        try:
            st = os.stat(self.key_file)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None  # missing or unreadable: the loader names the problem
        if stamp is not None and self._file_key is not None and self._file_key[0] == stamp:
            return [self._file_key[1]]
        key = keys.load_private_key(self.key_file)
        if key is None:
            raise VerificationError(
                "platform_key",
                f"no trusted sim platform key: {self.key_file} does not exist "
                "(set trusted_platform_keys, or generate a sim report on this host first)",
            )
        public = key.public_key()
        self._file_key = (stamp, public) if stamp is not None else None
        return [public]

    def _trusted_ders(self) -> list[bytes]:
        """The SubjectPublicKeyInfo DER of each of :meth:`_trusted`'s keys, computed again
        whenever that list holds other key objects (a changed key file is a new object)."""
        trusted = tuple(self._trusted())
        cached = self._ders
        if (
            cached is not None
            and len(cached[0]) == len(trusted)
            and all(a is b for a, b in zip(cached[0], trusted, strict=True))
        ):
            return cached[1]
        ders = [keys.spki_der(t) for t in trusted]
        self._ders = (trusted, ders)
        return ders

    async def check_evidence(self, report: Report, *, now: datetime) -> Evidence:
        body, der, key_sha256 = _verified_report(report.json_report)
        if not any(hmac.compare_digest(der, t) for t in self._trusted_ders()):
            raise VerificationError(
                "platform_key", "the report is signed by a sim platform key that is not trusted"
            )
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        issued = body.timestamp
        if issued > now + MAX_CLOCK_SKEW:
            raise VerificationError(
                "timestamp", f"report issued at {body.str_timestamp}, after {now.isoformat()}"
            )
        if self.max_age is not None and now - issued > self.max_age:
            raise VerificationError(
                "timestamp",
                f"report issued at {body.str_timestamp} is older than "
                f"{self.max_age.total_seconds():g} s",
            )
        attributes = Attributes(
            str_tee_platform=PLATFORM,
            hex_platform_measurement=body.hex_platform_measurement,
            hex_boot_measurement=body.hex_boot_measurement,
            hex_ta_measurement=body.hex_ta_measurement,
            bool_debug_disabled=body.bool_debug_disabled,
            hex_user_data=body.hex_user_data,
            hex_hash_or_pem_pubkey=body.hex_hash_or_pem_pubkey,
            str_verified_time=utc_seconds_text(now),
        )
        details = {
            "timestamp": body.str_timestamp,
            "platform_key_sha256": key_sha256,
        }
        return Evidence(attributes, details)
