"""Run one fuzz target coverage-guided under atheris/libFuzzer, for long local runs (not CI).

    cd fuzz && python fuzz_atheris.py <target> [libFuzzer options] [corpus dir]

Needs ``pip install atheris`` (binary wheels for some CPython versions only) and the test data
the targets read (``docs/fuzzing.md``). An empty corpus directory is first filled with the
target's seeds. A crash stops the run and libFuzzer writes the input to ``crash-<sha1>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from pathlib import Path

import atheris  # type: ignore[import-not-found,unused-ignore]


def main() -> None:
    with atheris.instrument_imports():  # the targets import their parsers on first use
        from fuzz_targets import TARGETS

        targets = {t.name: t for t in TARGETS}
        if len(sys.argv) < 2 or sys.argv[1] not in targets:
            sys.exit(f"usage: fuzz_atheris.py {{{','.join(targets)}}} [libFuzzer args] [corpus]")
        target = targets[sys.argv.pop(1)]
        for seed in target.seeds():
            target.run(seed)
    corpora = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    for corpus in corpora:
        if corpus.is_dir() and not any(corpus.iterdir()):
            for seed in target.seeds():
                (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324

    def one(data: bytes) -> None:
        with contextlib.suppress(*target.allowed):
            target.run(data)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
