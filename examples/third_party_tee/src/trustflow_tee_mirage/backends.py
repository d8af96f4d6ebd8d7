"""``MirageAttester`` and ``MirageVerifier``: the Mirage platform's backends.

Everything the Trustflow roles need to know about Mirage is declared on these classes; nothing
in ``trustflow_core`` names it:

* reports say ``str_tee_platform = "MIRAGE"`` (:data:`~trustflow_tee_mirage.report.PLATFORM`);
* data owners' policies see ``r.env.tee.platform == "mirage"`` and
  ``r.env.tee.mirage.{image, firmware, signer}`` (lowercase hex);
* the owner CLI pins a Mirage Capsule Manager with ``tee_plat: mirage`` and
  ``tee_constraints: {image, firmware, signer}``;
* the platform is **simulated**: verifiers reject its reports unless a policy sets
  ``allow_simulation``, it is never chosen unless named, and it is not the development default.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.attestation import (
    PASSPORT,
    Attester,
    Attributes,
    Evidence,
    Report,
    Verifier,
    check_generate_args,
)
from trustflow_core.errors import VerificationError
from trustflow_core.settings_schema import Node
from typing_extensions import Self

from . import keys
from .report import DEFAULT_MEASUREMENTS, PLATFORM, Claims, is_measurement, open_report, sign

NAME = "mirage"
#: How far a report's ``issued`` time may lie in the verifier's future.
MAX_CLOCK_SKEW = timedelta(minutes=5)


class MirageAttester(Attester):
    """Signs Mirage reports with the platform key (created on first use).

    Settings (all optional): ``platform_key_file``; ``measurements`` -- any of ``image``,
    ``firmware``, ``signer`` (64 lowercase hex chars; default
    :data:`~trustflow_tee_mirage.report.DEFAULT_MEASUREMENTS`); ``debug`` (default false).
    """

    name: ClassVar[str] = NAME
    platform: ClassVar[str] = PLATFORM
    simulated: ClassVar[bool] = True

    def __init__(
        self, key_file: Path, measurements: Mapping[str, str], *, debug: bool = False
    ) -> None:
        self.key_file = key_file
        self.measurements = {**DEFAULT_MEASUREMENTS, **measurements}
        self.debug = debug
        self._key: ec.EllipticCurvePrivateKey | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "mirage attester settings").mapping(
            {"platform_key_file", "measurements", "debug"}
        )
        measurements = root.get("measurements").mapping(DEFAULT_MEASUREMENTS)
        for _, node in measurements.items():
            if not is_measurement(node.value):
                raise node.expected("64 lowercase hex characters")
        return cls(
            root.get("platform_key_file").path(keys.default_key_file()),
            measurements.value,
            debug=root.get("debug").boolean(False),
        )

    async def generate(self, user_data: bytes, *, report_type: str = PASSPORT) -> Report:
        report_data = check_generate_args(user_data, report_type)
        if self._key is None:
            self._key = await asyncio.to_thread(keys.load_or_create, self.key_file)
        claims = Claims(
            report_data=report_data.hex(),
            image=self.measurements["image"],
            firmware=self.measurements["firmware"],
            signer=self.measurements["signer"],
            debug=self.debug,
            issued=int(time.time()),
        )
        return Report(
            str_tee_platform=PLATFORM,
            json_report=sign(claims, self._key),
            str_report_type=report_type,
        )


class MirageVerifier(Verifier):
    """Checks Mirage reports: exact format, signed by a **trusted** platform key, issued not
    in the future (beyond :data:`MAX_CLOCK_SKEW`) nor older than ``max_age_seconds``.

    Settings (all optional): ``trusted_platform_keys`` (PEM texts or files); else
    ``platform_key_file`` (trust that key; default :func:`~trustflow_tee_mirage.keys.
    default_key_file`, never created by the verifier); ``max_age_seconds``.
    """

    name: ClassVar[str] = NAME
    platform: ClassVar[str] = PLATFORM
    simulated: ClassVar[bool] = True
    tee_name: ClassVar[str] = NAME
    identity_fields: ClassVar[Mapping[str, str]] = {
        "image": "hex_ta_measurement",
        "firmware": "hex_boot_measurement",
        "signer": "hex_signer",
    }
    debug_flag: ClassVar[bool] = True

    def __init__(
        self,
        trusted: list[bytes] | None = None,
        *,
        key_file: Path | None = None,
        max_age: timedelta | None = None,
    ) -> None:
        self.trusted = trusted
        self.key_file = key_file or keys.default_key_file()
        self.max_age = max_age

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "mirage verifier settings").mapping(
            {"trusted_platform_keys", "platform_key_file", "max_age_seconds"}
        )
        trusted = root.get("trusted_platform_keys")
        max_age = root.get("max_age_seconds").number(None, zero_ok=False)
        return cls(
            [entry.build(keys.trusted_key) for entry in trusted.elements()]
            if trusted.present
            else None,
            key_file=root.get("platform_key_file").path(keys.default_key_file()),
            max_age=None if max_age is None else timedelta(seconds=max_age),
        )

    def _trusted(self) -> list[bytes]:
        if self.trusted is not None:
            return self.trusted
        if not self.key_file.exists():
            raise VerificationError(
                "platform_key", f"no trusted mirage platform key: {self.key_file} does not exist"
            )
        return [keys.spki_der(keys.load_or_create(self.key_file).public_key())]

    async def check_evidence(self, report: Report, *, now: datetime) -> Evidence:
        claims, platform_key = open_report(report.json_report)
        trusted = await asyncio.to_thread(self._trusted)
        if not any(hmac.compare_digest(platform_key, t) for t in trusted):
            raise VerificationError("platform_key", "the report is signed by an untrusted key")
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        issued = datetime.fromtimestamp(claims.issued, timezone.utc)
        if issued > now + MAX_CLOCK_SKEW:
            raise VerificationError("timestamp", f"report issued at {issued}, after {now}")
        if self.max_age is not None and now - issued > self.max_age:
            raise VerificationError("timestamp", f"report issued at {issued} is too old")
        attributes = Attributes(
            str_tee_platform=PLATFORM,
            hex_ta_measurement=claims.image,
            hex_boot_measurement=claims.firmware,
            hex_signer=claims.signer,
            bool_debug_disabled="false" if claims.debug else "true",
            hex_user_data=claims.report_data,
            str_verified_time=now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return Evidence(attributes, {"issued": claims.issued})
