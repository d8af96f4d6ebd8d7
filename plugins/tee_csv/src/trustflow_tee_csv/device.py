"""The ``/dev/csv-guest`` interface (Hygon's guest driver), behind a small seam.

:class:`GuestDevice` is what the attester needs: hand in the 112-byte request, get back the
4096-byte page the firmware wrote. :class:`CsvGuestDevice` implements it with the
``GET_ATTESTATION_REPORT`` ioctl; tests substitute a fake that plays the firmware.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from typing import Protocol

from trustflow_core.errors import BackendUnavailable

DEVICE_PATH = Path("/dev/csv-guest")
PAGE = 4096
#: ``_IOWR('D', 1, struct csv_guest_mem { unsigned long va; int size; })`` on x86_64.
GET_ATTESTATION_REPORT = 0xC0104401
REQUEST_SIZE = 64 + 16 + 32


class GuestDevice(Protocol):
    """Something that turns a report request into the firmware's report page."""

    def get_report(self, request: bytes) -> bytes:
        """``request`` = ``data[64] || mnonce[16] || SM3(data || mnonce)``; returns the
        4096-byte buffer after the firmware overwrote it with the report. Blocking."""
        ...


class CsvGuestDevice:
    """The real device: ``ioctl(fd, GET_ATTESTATION_REPORT, &{va = page, size = 4096})``."""

    def __init__(self, path: Path = DEVICE_PATH) -> None:
        self.path = path

    def get_report(self, request: bytes) -> bytes:
        import fcntl

        if len(request) > PAGE:
            raise ValueError("CSV report request larger than a page")
        page = ctypes.create_string_buffer(request.ljust(PAGE, b"\0"), PAGE)
        mem = bytearray(struct.pack("<QiI", ctypes.addressof(page), PAGE, 0))
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise BackendUnavailable(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.ioctl(fd, GET_ATTESTATION_REPORT, mem, True)
        except OSError as exc:
            raise BackendUnavailable(f"GET_ATTESTATION_REPORT ioctl on {self.path}: {exc}") from exc
        finally:
            os.close(fd)
        return page.raw
