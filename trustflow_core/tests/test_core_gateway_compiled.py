"""The build of the gateway's request path (roles/gateway/compiled.py): interpreted from an
editable install, compiled by mypyc in the ``compiled`` tox env (a wheel built with
``TRUSTFLOW_COMPILE=1``), where the gateway's own tests then run against the extensions."""

from __future__ import annotations

import os
from pathlib import Path

from trustflow_core.roles.gateway import compiled


def test_the_running_build_is_the_one_installed() -> None:
    expected = "compiled" if os.environ.get("TRUSTFLOW_EXPECT_COMPILED") == "1" else "interpreted"
    assert compiled.build() == expected, {m: compiled.is_compiled(m) for m in compiled.MODULES}


def test_every_listed_module_is_a_module_of_the_gateway() -> None:
    package = Path(compiled.__file__).parent
    for name in compiled.MODULES:
        prefix, _, module = name.rpartition(".")
        assert prefix == compiled.__package__
        assert (package / f"{module}.py").is_file(), name
    assert compiled.__name__ not in compiled.MODULES
