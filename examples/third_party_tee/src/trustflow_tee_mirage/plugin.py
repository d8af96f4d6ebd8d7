"""Hook implementations of the ``tee_mirage`` plugin (imports nothing heavy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustflow_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from trustflow_core.attestation import Attester, Verifier
    from trustflow_core.hookspecs import Register


@hookimpl
def trustflow_register_attesters(register: Register[type[Attester]]) -> None:
    from .backends import MirageAttester

    register(MirageAttester)


@hookimpl
def trustflow_register_verifiers(register: Register[type[Verifier]]) -> None:
    from .backends import MirageVerifier

    register(MirageVerifier)
