"""The build of the RFC profile's per-envelope path (``compiled.py``): interpreted from an
editable install, compiled by mypyc in the ``compiled`` tox env (a wheel built with
``TRUSTFLOW_COMPILE=1``), where this package's tests then run against the extensions."""

from __future__ import annotations

import os
from pathlib import Path

from trustflow_core.compiled_build import is_compiled

from trustflow_channel_jwe import compiled


def test_the_running_build_is_the_one_installed() -> None:
    expected = "compiled" if os.environ.get("TRUSTFLOW_EXPECT_COMPILED") == "1" else "interpreted"
    assert compiled.build() == expected, {m: is_compiled(m) for m in compiled.MODULES}


def test_every_listed_module_is_a_source_module_of_this_package() -> None:
    package = Path(compiled.__file__).parent
    for name in compiled.MODULES:
        prefix, _, module = name.rpartition(".")
        assert prefix == compiled.__package__, name
        assert (package / f"{module}.py").is_file(), name
    assert compiled.__name__ not in compiled.MODULES
