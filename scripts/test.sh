#!/usr/bin/env bash
# The full test suite: every tox env (one per distribution, integration, py310 and py313 (the
# distributions' tests on the oldest and newest supported Python), fuzz (every fuzz target for a
# bounded time), lint, typecheck, proto drift, docs (the documentation site, mkdocs --strict)),
# two at a time, then one summary line over all of them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "tox>=4.11"
if command -v pyenv >/dev/null; then  # make pyenv's python3.10 / python3.13 findable for tox
    extra=$(pyenv versions --bare | grep -E '^3\.(10|13)\.[0-9]+$' | sort -V | tr '\n' ':' || true)
    [ -z "$extra" ] || export PYENV_VERSION="${PYENV_VERSION:-$(pyenv version-name)}:${extra%:}"
fi
rm -f .tox/junit-*.xml
status=0
.venv/bin/tox run-parallel --parallel 2 --parallel-no-spinner -- "$@" || status=$?
.venv/bin/python scripts/junit_summary.py ".tox/junit-*.xml" || status=1
exit "$status"
