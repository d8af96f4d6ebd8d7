"""The build's one option: ``TRUSTFLOW_COMPILE=1`` compiles the gateway's request path (the
modules of ``roles/gateway/compiled.py``) with mypyc into C extensions shipped beside their
sources; without it, the default, the package is pure Python. The build backend
(``build_support/backend.py``) adds mypy to the build requirements and turns the option off for
everything but a wheel (an editable install stays interpreted).
docs/packaging.md#the-compiled-gateway"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup

# the backend's folder: compiled_extensions() is shared with the build backend
sys.path.insert(0, str(Path(__file__).parent / "build_support"))
from backend import compiled_extensions

setup(ext_modules=compiled_extensions("src/trustflow_core/roles/gateway/compiled.py"))
