"""What TEE backends declare about their platform, and how the registry checks it.

The roles take platform knowledge (policy identity, acceptance entries, simulation, the
development default) from these declarations; the Mirage example
(``examples/third_party_tee``) runs every role on them end to end.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from trustflow_core import hookimpl
from trustflow_core.attestation import Attester, Attributes, Evidence, Report, Verifier
from trustflow_core.errors import PluginError
from trustflow_core.registry import (
    ATTESTER,
    VERIFIER,
    attester_class,
    backends_of,
    development_default,
    verifier_class,
)


class _Quartz(Verifier):
    """A declared platform: ``r.env.tee.quartz.{code, boot}``, with a debug flag."""

    name: ClassVar[str] = "quartz"
    platform: ClassVar[str] = "QUARTZ"
    tee_name: ClassVar[str] = "quartz"
    identity_fields: ClassVar[Mapping[str, str]] = {
        "code": "hex_ta_measurement",
        "boot": "hex_boot_measurement",
    }
    constraint_fields: ClassVar[Mapping[str, str] | None] = {"mr_code": "hex_ta_measurement"}
    debug_flag: ClassVar[bool] = True

    async def check_evidence(self, report: Report, *, now: Any) -> Evidence:
        raise NotImplementedError


class _Plain(Verifier):
    """Declares nothing beyond its platform."""

    name: ClassVar[str] = "plain"
    platform: ClassVar[str] = "PLAIN"

    async def check_evidence(self, report: Report, *, now: Any) -> Evidence:
        raise NotImplementedError


def _attester(name: str, *, simulated: bool, default: bool) -> type[Attester]:
    class _A(Attester):
        async def generate(self, user_data: bytes, *, report_type: str = "Passport") -> Report:
            raise NotImplementedError

    _A.name, _A.platform = name, name.upper()
    _A.simulated, _A.development_default = simulated, default
    return _A


def _verifier(name: str, **declared: Any) -> type[Verifier]:
    return type(f"V_{name}", (_Plain,), {"name": name, "platform": name.upper(), **declared})


def _plugin(attesters: tuple[type, ...] = (), verifiers: tuple[type, ...] = ()) -> Any:
    module = types.ModuleType("declaring_plugin")

    @hookimpl
    def trustflow_register_attesters(register):
        for cls in attesters:
            register(cls)

    @hookimpl
    def trustflow_register_verifiers(register):
        for cls in verifiers:
            register(cls)

    module.trustflow_register_attesters = trustflow_register_attesters
    module.trustflow_register_verifiers = trustflow_register_verifiers
    return module


# ---- the declarations -------------------------------------------------------------------------


def test_acceptance_entry_is_the_platform_with_debug_disabled_where_there_is_a_flag() -> None:
    assert _Quartz.acceptance_entry() == Attributes(
        str_tee_platform="QUARTZ", bool_debug_disabled="true"
    )
    assert _Plain.acceptance_entry() == Attributes(str_tee_platform="PLAIN")
    pinned = _Quartz.acceptance_entry(hex_ta_measurement="aa", hex_signer="")
    assert pinned.hex_ta_measurement == "aa" and pinned.hex_signer == ""


def test_constraints_pin_by_the_declared_names_and_ignore_others() -> None:
    entry = _Quartz.constraints_entry({"mr_code": "ab", "mr_boot": "cd", "code": "ef"})
    assert entry == Attributes(
        str_tee_platform="QUARTZ", bool_debug_disabled="true", hex_ta_measurement="ab"
    )
    # without constraint_fields, the identity names are the constraint names
    plain = _verifier("ident", tee_name="ident", identity_fields={"m": "hex_signer"})
    assert plain.constraints_entry({"m": "12", "x": "34"}).hex_signer == "12"


def test_policy_identity_exposes_the_declared_fields_in_lowercase() -> None:
    attributes = Attributes(
        str_tee_platform="QUARTZ",
        hex_ta_measurement="ABCD",
        hex_boot_measurement="0F",
        hex_signer="99",
    )
    assert _Quartz.policy_identity(attributes) == {
        "platform": "quartz",
        "quartz": {"code": "abcd", "boot": "0f"},
    }
    assert _Plain.policy_identity(attributes) is None


# ---- the registry checks them -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "match"),
    [
        (
            {"tee_name": "x", "identity_fields": {"m": "hex_nothing"}},
            r"unknown attribute.*hex_nothing",
        ),
        ({"identity_fields": {"m": "hex_signer"}}, "has no tee_name"),
        ({"constraint_fields": {"m": "mr_ta"}}, r"unknown attribute.*mr_ta"),
    ],
)
def test_bad_identity_declarations_fail_at_load_naming_the_plugin(pm, declared, match) -> None:
    pm.register(_plugin(verifiers=(_verifier("bad", **declared),)), name="declaring")
    with pytest.raises(PluginError, match=match) as info:
        backends_of(pm, VERIFIER)
    assert "'declaring'" in str(info.value)


def test_the_development_default_is_the_one_simulated_backend_that_says_so(pm) -> None:
    real = _attester("real", simulated=False, default=False)
    dev = _attester("dev", simulated=True, default=True)
    other_sim = _attester("othersim", simulated=True, default=False)
    pm.register(_plugin(attesters=(real, dev, other_sim)), name="p")
    assert development_default(pm, ATTESTER) is dev
    assert attester_class(pm, None) is dev
    assert attester_class(pm, "othersim") is other_sim
    assert verifier_class(pm, None) is None  # no verifier declares itself the default


@pytest.mark.parametrize(
    ("attesters", "match"),
    [
        (
            (
                _attester("one", simulated=True, default=True),
                _attester("two", simulated=True, default=True),
            ),
            r"\['one', 'two'\] all claim to be the development default",
        ),
        ((_attester("hw", simulated=False, default=True),), "'hw' .* is not simulated"),
    ],
)
def test_development_default_claims_are_checked(pm, attesters, match) -> None:
    pm.register(_plugin(attesters=attesters), name="p")
    with pytest.raises(PluginError, match=match):
        backends_of(pm, ATTESTER)
