"""Which build of the RFC profile's per-envelope path is running: its modules compiled by mypyc
(a wheel built with ``TRUSTFLOW_COMPILE=1``, as the gateway's request path in trustflow-core),
or interpreted. :data:`MODULES` is the one list: ``setup.py`` reads it without importing the
package. docs/packaging.md#the-compiled-gateway
"""

from __future__ import annotations

#: What a gateway runs per RFC envelope: opening, the reply's sealing, strict member decoding.
MODULES = (
    "trustflow_channel_jwe.codec",
    "trustflow_channel_jwe.rfc",
)


def build() -> str:
    """``"compiled"``, ``"interpreted"`` or ``"mixed"``
    (:func:`~trustflow_core.compiled_build.build_of`). Imported here, not at the top:
    ``setup.py`` runs this file where trustflow-core is not installed."""
    from trustflow_core.compiled_build import build_of

    return build_of(MODULES)
