"""Trustflow's simulated TEE (``sim`` attester and verifier, platform ``"SIM"``).

For development and tests only: reports are signed by a software "platform key" kept in a
file, so they prove nothing about hardware. Verifiers reject them unless the policy sets
``allow_simulation``. Upstream peers never see ``SIM`` reports (docs/compat.md#sim-report-omitted).
"""

from __future__ import annotations
