#!/usr/bin/env bash
# The full test suite: every tox env (one per distribution, integration, lint, typecheck,
# proto drift), two at a time, then one summary line over all of them. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "tox>=4.11"
rm -f .tox/junit-*.xml
status=0
.venv/bin/tox run-parallel --parallel 2 --parallel-no-spinner -- "$@" || status=$?
.venv/bin/python scripts/junit_summary.py ".tox/junit-*.xml" || status=1
exit "$status"
