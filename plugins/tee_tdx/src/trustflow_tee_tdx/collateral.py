"""Intel collateral (TCB info, QE identity, CRLs, issuer chains) as one value, and the JSON
forms it travels in (Intel PCS API).

Two bundle formats are read:

* dcap-qvl ``QuoteCollateralV3``: ``tcb_info`` / ``qe_identity`` hold the exact signed inner
  object text, signatures are separate hex fields, CRLs hex DER;
* upstream ``SgxQlQveCollateral`` protobuf JSON (the Passport ``json_collateral``):
  ``tcb_info`` / ``qe_identity`` hold the whole PCS response ``{"tcbInfo":{...},
  "signature":"..."}``, ``version`` / ``tee_type`` may be JSON strings.

:meth:`Collateral.to_json` writes the ``SgxQlQveCollateral`` form (``tee_type`` 129). Raw signed
bytes are never re-serialised: signatures cover the exact served text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from trustflow_core.errors import InvalidInput

_SIGNED = {
    "tcbInfo": re.compile(
        rb'\s*\{\s*"tcbInfo"\s*:\s*(\{.*\})\s*,\s*"signature"\s*:\s*"([0-9a-fA-F]{128})"\s*\}\s*',
        re.DOTALL,
    ),
    "enclaveIdentity": re.compile(
        rb'\s*\{\s*"enclaveIdentity"\s*:\s*(\{.*\})\s*,\s*"signature"\s*:\s*"([0-9a-fA-F]{128})"'
        rb"\s*\}\s*",
        re.DOTALL,
    ),
}
_TEXT_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


def split_signed(response: bytes, key: str) -> tuple[bytes, bytes]:
    """Split a PCS response ``{"<key>":{...},"signature":"<hex>"}`` into the exact signed
    inner-object bytes and the 64-byte raw signature."""
    match = _SIGNED[key].fullmatch(response.rstrip(b"\0"))
    if match is None:
        raise InvalidInput(f'collateral: not a signed {{"{key}": ..., "signature": ...}} object')
    return match.group(1), bytes.fromhex(match.group(2).decode())


def parse_time(value: Any, what: str) -> datetime:
    """An RFC 3339 UTC timestamp of Intel JSON (``2025-06-19T10:16:03Z``)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"{what} is not RFC 3339: {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidInput(f"{what} has no time zone: {value!r}")
    return parsed


@dataclass(frozen=True)
class Collateral:
    """Everything a TDX quote's TCB appraisal needs; any piece may be missing (None).

    ``tcb_info`` / ``qe_identity`` are the exact signed JSON object bytes, the signatures raw
    64-byte ``r || s``, the chains PEM bytes, the CRLs DER/PEM/hex bytes as received.
    """

    tcb_info: bytes | None = None
    tcb_info_signature: bytes | None = None
    tcb_info_issuer_chain: bytes | None = None
    qe_identity: bytes | None = None
    qe_identity_signature: bytes | None = None
    qe_identity_issuer_chain: bytes | None = None
    pck_crl: bytes | None = None
    pck_crl_issuer_chain: bytes | None = None
    root_ca_crl: bytes | None = None

    def merged(self, other: Collateral) -> Collateral:
        """This collateral with the pieces it lacks taken from ``other``."""
        return replace(
            self,
            **{
                f.name: getattr(other, f.name)
                for f in fields(self)
                if getattr(self, f.name) is None
            },
        )

    @classmethod
    def from_pcs(
        cls,
        *,
        tcb_info_response: bytes | None = None,
        qe_identity_response: bytes | None = None,
        **pieces: bytes | None,
    ) -> Collateral:
        """Build from PCS response bodies (``{"tcbInfo":...,"signature":...}`` etc.) and
        other pieces by field name."""
        values: dict[str, bytes | None] = dict(pieces)
        if tcb_info_response is not None:
            values["tcb_info"], values["tcb_info_signature"] = split_signed(
                tcb_info_response, "tcbInfo"
            )
        if qe_identity_response is not None:
            values["qe_identity"], values["qe_identity_signature"] = split_signed(
                qe_identity_response, "enclaveIdentity"
            )
        return cls(**values)

    @classmethod
    def from_json(cls, text: bytes | str) -> Collateral:
        """Parse a dcap-qvl ``QuoteCollateralV3`` or an ``SgxQlQveCollateral`` JSON bundle."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidInput(f"collateral is not JSON: {exc}") from exc
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Collateral:
        if not isinstance(data, Mapping):
            raise InvalidInput("collateral must be a JSON object")
        unknown = sorted(set(data) - {*_TEXT_FIELDS, "version", "tee_type"})
        if unknown:
            raise InvalidInput(f"collateral has unknown field(s) {unknown}")
        tee_type = data.get("tee_type", 0x81)
        if str(tee_type) not in ("129", "0x81"):
            raise InvalidInput(f"collateral tee_type {tee_type!r} is not TDX (129)")
        values: dict[str, bytes | None] = {}
        for name in _TEXT_FIELDS:
            value = data.get(name)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise InvalidInput(f"collateral field {name!r} must be a string")
            try:
                values[name] = value.encode()
            except UnicodeEncodeError:  # an unpaired surrogate escape such as "\ud800"
                raise InvalidInput(f"collateral field {name!r} is not valid Unicode") from None
        for name, key in (("tcb_info", "tcbInfo"), ("qe_identity", "enclaveIdentity")):
            raw, sig_name = values.get(name), f"{name}_signature"
            if raw is None:
                continue
            if sig_name in values:
                try:
                    values[sig_name] = bytes.fromhex(values[sig_name].decode())  # type: ignore[union-attr]
                except ValueError as exc:
                    raise InvalidInput(f"collateral {sig_name} is not hex") from exc
            else:
                values[name], values[sig_name] = split_signed(raw, key)
        if "tcb_info_signature" in values and "tcb_info" not in values:
            raise InvalidInput("collateral has tcb_info_signature without tcb_info")
        if "qe_identity_signature" in values and "qe_identity" not in values:
            raise InvalidInput("collateral has qe_identity_signature without qe_identity")
        return cls(**values)

    def to_json(self) -> str:
        """Compact ``SgxQlQveCollateral`` JSON (as upstream puts in ``json_collateral``)."""
        out: dict[str, str] = {"version": "3"}
        text = {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain,
            "root_ca_crl": _crl_text(self.root_ca_crl),
            "pck_crl": _crl_text(self.pck_crl),
            "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
            "tcb_info": _signed_text("tcbInfo", self.tcb_info, self.tcb_info_signature),
            "qe_identity_issuer_chain": self.qe_identity_issuer_chain,
            "qe_identity": _signed_text(
                "enclaveIdentity", self.qe_identity, self.qe_identity_signature
            ),
        }
        for name, value in text.items():
            if value:
                out[name] = value.decode()
        out["tee_type"] = "129"
        return json.dumps(out, separators=(",", ":"))


def _signed_text(key: str, body: bytes | None, signature: bytes | None) -> bytes | None:
    if body is None or signature is None:
        return None
    return (
        b'{"' + key.encode() + b'":' + body + b',"signature":"' + signature.hex().encode() + b'"}'
    )


def _crl_text(crl: bytes | None) -> bytes | None:
    if crl is None:
        return None
    stripped = crl.strip()
    if stripped.startswith(b"-----BEGIN") or re.fullmatch(rb"[0-9a-fA-F]+", stripped):
        return stripped
    return crl.hex().encode()


def load_collateral_file(path: str | Path) -> Collateral:
    """A collateral bundle file (dcap-qvl ``QuoteCollateralV3`` or ``SgxQlQveCollateral``)."""
    try:
        text = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read collateral file {path}: {exc}") from exc
    return Collateral.from_json(text)
