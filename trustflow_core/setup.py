"""The build's one option: ``TRUSTFLOW_COMPILE=1`` compiles the gateway's request path (the
modules of ``roles/gateway/compiled.py``) with mypyc into C extensions shipped beside their
sources; without it, the default, the package is pure Python. The build backend
(``build_support/backend.py``) adds mypy to the build requirements and turns the option off for
everything but a wheel (an editable install stays interpreted).
docs/packaging.md#the-compiled-gateway"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import Extension, setup

SRC = Path("src")


def compiled_extensions() -> list[Extension]:
    if os.environ.get("TRUSTFLOW_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    listing = runpy.run_path(str(SRC / "trustflow_core/roles/gateway/compiled.py"))
    paths = [str(SRC.joinpath(*name.split("."))) + ".py" for name in listing["MODULES"]]
    # no config file (the repository's would apply its lint settings); the build environment
    # holds cryptography, no other library: their types are Any to mypyc
    return mypycify(["--config-file=", "--ignore-missing-imports", *paths], opt_level="3")


setup(ext_modules=compiled_extensions())
