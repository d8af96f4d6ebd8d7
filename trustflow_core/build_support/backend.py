"""setuptools' PEP 517 backend, with mypy among the build requirements when
``TRUSTFLOW_COMPILE=1`` asks ``setup.py`` to compile with mypyc (:func:`compiled_extensions`,
which each project's ``setup.py`` calls with its list of modules). Only a wheel is compiled: the
other hooks (requirements, metadata, sdist, editable) run ``setup.py`` with the option off, so
mypy runs once per build and an editable install stays interpreted (an extension would shadow
the source being edited). trustflow-core's; the jwe channel's ``build_support`` links here."""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import sys
from collections.abc import Iterator
from typing import Any

from setuptools import build_meta

#: mypyc comes with mypy (the version the typecheck env pins, tox.ini); cryptography's types
#: are part of the request path's (the other libraries there ship none)
COMPILER = ["mypy==2.4.1", "cryptography>=45"]


def _compiling() -> bool:
    return os.environ.get("TRUSTFLOW_COMPILE") == "1"


def compiled_extensions(listing: str) -> list[Any]:
    """The C extensions of the modules named by ``MODULES`` in the file ``listing`` (under
    ``src``, read without importing the package) when compiling, else none."""
    if not _compiling():
        return []
    from mypyc.build import mypycify

    modules = runpy.run_path(listing)["MODULES"]
    paths = [os.path.join("src", *name.split(".")) + ".py" for name in modules]
    # no config file (the repository's would apply its lint settings); the build environment
    # holds cryptography and no other library (trustflow-core neither, for a plugin): their
    # types are Any to mypyc
    return mypycify(["--config-file=", "--ignore-missing-imports", *paths], opt_level="3")


@contextlib.contextmanager
def _interpreted() -> Iterator[None]:
    saved = os.environ.get("TRUSTFLOW_COMPILE")
    os.environ["TRUSTFLOW_COMPILE"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TRUSTFLOW_COMPILE"]
        else:
            os.environ["TRUSTFLOW_COMPILE"] = saved


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> str:
    # setuptools packs whatever an earlier build left in build/lib: an extension of a module
    # no longer compiled (or no longer asked for) would ship beside its source
    shutil.rmtree("build", ignore_errors=True)
    return build_meta.build_wheel(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    compiler = COMPILER if _compiling() else []
    with _interpreted():
        return [*build_meta.get_requires_for_build_wheel(config_settings), *compiler]


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Any = None) -> str:
    with _interpreted():
        return build_meta.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    with _interpreted():
        return build_meta.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    with _interpreted():
        return build_meta.build_sdist(sdist_directory, config_settings)


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    with _interpreted():
        return build_meta.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Any = None
) -> str:
    with _interpreted():
        return build_meta.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> str:
    if _compiling():
        print("TRUSTFLOW_COMPILE=1 ignored: an editable install stays interpreted", file=sys.stderr)
    with _interpreted():
        return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
