"""What ``trustflow attest doctor --plat tdx`` finds out about this host before generating
(:meth:`TdxAttester.diagnose`): kernel, TD detection, every quote path with why it can or
cannot work, where Passport collateral would come from. Probes only; the host is a seam
(:class:`Host`) so every outcome can be tested without a TD."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustflow_core.attestation import Diagnostic

from .guest import ConfigfsTsm, QgsVsock, TdxGuestDevice


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


@dataclass
class Host:
    """The facts read from the running system (real by default; tests pass their own)."""

    kernel_release: str = field(default_factory=lambda: os.uname().release)
    cpuinfo: str = field(default_factory=lambda: _read("/proc/cpuinfo"))


def kernel_version(release: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _kernel(release: str) -> Diagnostic:
    version = kernel_version(release)
    if version is None:
        return Diagnostic("kernel", "warn", f"cannot read the version of kernel {release!r}")
    if version >= (6, 7):
        return Diagnostic("kernel", "ok", f"{release}: configfs-tsm quotes are in mainline")
    if version >= (6, 2):
        return Diagnostic(
            "kernel",
            "warn",
            f"{release}: /dev/tdx_guest gives TDREPORTs only; quotes need the QGS over vsock "
            "(port in /etc/tdx-attest.conf) or an out-of-tree driver (Linux >= 6.7 has "
            "configfs-tsm)",
        )
    return Diagnostic(
        "kernel",
        "warn",
        f"{release}: older than 6.2, no mainline tdx-guest driver (a distribution kernel may "
        "backport one)",
    )


def diagnose(
    paths: Mapping[str, ConfigfsTsm | QgsVsock | TdxGuestDevice],
    settings: Mapping[str, Any],
    host: Host | None = None,
) -> list[Diagnostic]:
    """The doctor's checks for the quote ``paths`` built from ``settings``
    (:func:`~trustflow_tee_tdx.attester.quote_paths`) on ``host``."""
    host = host or Host()
    checks = [_kernel(host.kernel_release)]
    configfs, vsock, device = paths["configfs"], paths["vsock"], paths["ioctl"]
    assert isinstance(configfs, ConfigfsTsm) and isinstance(vsock, QgsVsock)
    assert isinstance(device, TdxGuestDevice)
    in_td = " tdx_guest" in host.cpuinfo or "\ttdx_guest" in host.cpuinfo
    device_reason = device.unavailable_reason()
    if in_td:
        checks.append(Diagnostic("guest", "ok", "the CPU reports tdx_guest: this is a TD"))
    elif device_reason is None:
        checks.append(
            Diagnostic("guest", "warn", f"{device.path} exists but the CPU lacks tdx_guest")
        )
    else:
        checks.append(
            Diagnostic("guest", "fail", "not inside an Intel TDX guest (no tdx_guest CPU flag)")
        )
    checks.append(
        Diagnostic("device", "ok", f"{device.path} is present")
        if device_reason is None
        else Diagnostic("device", "warn", device_reason)
    )
    usable = 0
    reason = configfs.unavailable_reason()
    if reason is None:
        usable += 1
        checks.append(
            Diagnostic(
                "path configfs-tsm",
                "ok",
                f"{configfs.root} present (tried first; provider checked when generating)",
            )
        )
    else:
        checks.append(Diagnostic("path configfs-tsm", "unusable", reason))
    reason = vsock.probe()
    if reason is None:
        usable += 1
        source = "qgs_port setting" if settings.get("qgs_port") is not None else vsock.config
        checks.append(
            Diagnostic(
                "path QGS over vsock",
                "ok",
                f"QGS reachable at {vsock.address} (port from {source}; tried second)",
            )
        )
    else:
        checks.append(Diagnostic("path QGS over vsock", "unusable", reason))
    if device_reason is None:
        usable += 1
        checks.append(
            Diagnostic(
                "path TDX_CMD_GET_QUOTE",
                "warn",
                "device present, but only out-of-tree drivers implement GET_QUOTE (mainline "
                "answers ENOTTY); tried last",
            )
        )
    else:
        checks.append(Diagnostic("path TDX_CMD_GET_QUOTE", "unusable", device_reason))
    pinned = settings.get("interface", "auto")
    if pinned != "auto":
        checks.append(Diagnostic("interface", "info", f"pinned to {pinned!r}: only it is used"))
    if not usable:
        checks.append(Diagnostic("quote paths", "fail", "no quote path can work on this host"))
    if settings.get("collateral_file"):
        checks.append(
            Diagnostic(
                "collateral", "ok", f"Passport collateral from {settings['collateral_file']}"
            )
        )
    elif settings.get("pccs_url"):
        checks.append(
            Diagnostic(
                "collateral", "ok", f"Passport collateral from the PCCS {settings['pccs_url']}"
            )
        )
    else:
        fallback = settings.get("background_check_fallback") is True
        checks.append(
            Diagnostic(
                "collateral",
                "warn",
                "no collateral_file or pccs_url: Passport reports "
                + ("fall back to BackgroundCheck" if fallback else "are refused"),
            )
        )
    if settings.get("public_key_file"):
        checks.append(
            Diagnostic(
                "public key",
                "info",
                f"report-data bytes 32..63 bind {settings['public_key_file']}",
            )
        )
    return checks
