"""Hook implementations of ``trustflow-storage-oss`` (cheap imports only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustflow_core import hookimpl

if TYPE_CHECKING:
    from trustflow_core.hookspecs import Register
    from trustflow_core.storage import Storage


@hookimpl
def trustflow_register_storages(register: Register[type[Storage]]) -> None:
    from .oss import OssStorage
    from .s3 import S3Storage

    register(S3Storage)
    register(OssStorage)
