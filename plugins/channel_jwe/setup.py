"""The build's one option, as trustflow-core's: ``TRUSTFLOW_COMPILE=1`` compiles the modules of
``compiled.py`` (the RFC profile's per-envelope path) with mypyc into C extensions shipped beside
their sources; without it, the default, the package is pure Python. The build backend
(``build_support``, trustflow-core's own, linked) adds mypy to the build requirements and turns
the option off for everything but a wheel. docs/packaging.md#the-compiled-gateway"""

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

    listing = runpy.run_path(str(SRC / "trustflow_channel_jwe/compiled.py"))
    paths = [str(SRC.joinpath(*name.split("."))) + ".py" for name in listing["MODULES"]]
    # no config file (the repository's would apply its lint settings); trustflow-core is not in
    # the build environment: its types are Any to mypyc, as jwcrypto's
    return mypycify(["--config-file=", "--ignore-missing-imports", *paths], opt_level="3")


setup(ext_modules=compiled_extensions())
