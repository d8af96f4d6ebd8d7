"""Which build of the gateway's request path is running: its modules compiled by mypyc into C
extensions (a wheel built with ``TRUSTFLOW_COMPILE=1``; the image when it can), or interpreted.

:data:`MODULES` is the one list of what is compiled: ``trustflow_core/setup.py`` reads it (without
importing the package) and hands those files to mypyc; the benchmark and the gateway's start-up
log report :func:`build`. A compiled module takes the place of its source in the same package,
with the same behaviour (the ``compiled`` tox env runs the gateway's tests against it); mypyc
checks the annotated types at run time and cannot express async generators, and a frozen
dataclass it compiled cannot be unpickled: the configuration handed to spawned workers
(``config.py``, ``freshness.FreshnessConfig``) stays interpreted.
docs/packaging.md#the-compiled-gateway
"""

from __future__ import annotations

#: The modules on the gateway's request path, compiled together (this module is not one): the
#: gateway's own; the strict JSON and base64url parsing (``trustflow_core.jose``) that its
#: JWE filter and the ``jwe`` channel run on every envelope; the request ids and the request
#: tally of the roles' metrics it takes or makes and counts per request (shared with every
#: role: in a compiled build the CM and the CLI use the compiled modules too).
MODULES = (
    "trustflow_core.jose",
    "trustflow_core.roles._request_ids",
    "trustflow_core.roles._request_tally",
    "trustflow_core.roles.gateway.deadlines",
    "trustflow_core.roles.gateway.guard",
    "trustflow_core.roles.gateway.h1client",
    "trustflow_core.roles.gateway.http_proxy",
    "trustflow_core.roles.gateway.jwe_filter",
    "trustflow_core.roles.gateway.relay",
    "trustflow_core.roles.gateway.replay",
    "trustflow_core.roles.gateway.upstreams",
)


def build() -> str:
    """``"compiled"``, ``"interpreted"`` or ``"mixed"``
    (:func:`~trustflow_core.compiled_build.build_of`). Imported here, not at the top:
    ``setup.py`` runs this file to read :data:`MODULES` before the package is importable."""
    from ...compiled_build import build_of

    return build_of(MODULES)
