"""``SimAttester``: signs SIM reports with the simulated platform key (see :mod:`.report`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.attestation import PASSPORT, Attester, Report, check_generate_args
from trustflow_core.errors import InvalidInput
from trustflow_core.settings_schema import Node
from typing_extensions import Self

from . import keys
from .report import DEFAULT_MEASUREMENTS, PLATFORM, TIMESTAMP_FORMAT, SimBody, is_measurement, sign


class SimAttester(Attester):
    """Simulated attester (``name = "sim"``, platform ``"SIM"``); never auto-selected.

    Settings (all optional):

    * ``platform_key_file`` -- the platform key PEM, created on first use (default
      :func:`trustflow_tee_sim.keys.default_key_file`, read when the attester is built);
    * ``measurements`` -- a mapping overriding any of ``hex_platform_measurement``,
      ``hex_boot_measurement``, ``hex_ta_measurement`` (hex of 1..64 bytes; default
      :data:`~trustflow_tee_sim.report.DEFAULT_MEASUREMENTS`);
    * ``debug`` -- true to report a debug TEE (``bool_debug_disabled = "false"``).
    """

    name: ClassVar[str] = "sim"
    platform: ClassVar[str] = PLATFORM
    simulated: ClassVar[bool] = True
    #: Roles use ``sim`` when configuration names no TEE (as upstream defaults to ``--plat sim``).
    development_default: ClassVar[bool] = True

    def __init__(
        self,
        key_file: Path | None = None,
        measurements: Mapping[str, str] | None = None,
        *,
        debug: bool = False,
    ) -> None:
        self.key_file = key_file or keys.default_key_file()
        self.measurements = {**DEFAULT_MEASUREMENTS, **_check_measurements(measurements or {})}
        self.debug = debug
        self._key: ec.EllipticCurvePrivateKey | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "sim attester settings").mapping(
            {"platform_key_file", "measurements", "debug"}
        )
        measurements = root.get("measurements").mapping(DEFAULT_MEASUREMENTS)
        for _, node in measurements.items():
            if not is_measurement(node.string().lower()):
                raise node.expected("hex of 1 to 64 bytes")
        return cls(
            root.get("platform_key_file").path(None),
            measurements.value,
            debug=root.get("debug").boolean(False),
        )

    async def generate(self, user_data: bytes, *, report_type: str = PASSPORT) -> Report:
        """A SIM report binding ``user_data`` (bytes 0..31 of the report data; 32..63 zero),
        signed now by the platform key (created on first use)."""
        report_data = check_generate_args(user_data, report_type)
        if self._key is None:
            self._key = await asyncio.to_thread(keys.load_or_create_private_key, self.key_file)
        body = SimBody(
            hex_user_data=report_data.hex(),
            hex_hash_or_pem_pubkey=bytes(32).hex(),
            bool_debug_disabled="false" if self.debug else "true",
            str_timestamp=datetime.now(timezone.utc).strftime(TIMESTAMP_FORMAT),
            pem_platform_public_key=keys.public_key_pem(self._key.public_key()),
            **self.measurements,
        )
        return Report(
            str_tee_platform=PLATFORM,
            json_report=sign(body, self._key),
            str_report_type=report_type,
        )


def _check_measurements(measurements: Mapping[str, Any]) -> dict[str, str]:
    unknown = sorted(set(measurements) - set(DEFAULT_MEASUREMENTS))
    if unknown:
        raise InvalidInput(
            f"sim attester measurements: unknown name(s) {unknown}; "
            f"known: {sorted(DEFAULT_MEASUREMENTS)}"
        )
    result = {}
    for name, value in measurements.items():
        normalized = value.lower() if isinstance(value, str) else value
        if not is_measurement(normalized):
            raise InvalidInput(f"sim attester measurement {name!r} must be hex of 1 to 64 bytes")
        result[name] = normalized
    return result
