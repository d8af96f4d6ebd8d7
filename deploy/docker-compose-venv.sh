#!/usr/bin/env bash
# A venv with PyPI's docker-compose 1.29.2 (the Python implementation; its `config` validates a
# compose file without a Docker daemon) at DIR, for deploy/tests. docker-compose pins
# PyYAML<6, whose last release (5.4.1) no longer builds with Cython 3 under build isolation:
# it is built here with Cython<3 and no isolation first.
#   deploy/docker-compose-venv.sh DIR     -> DIR/bin/docker-compose
set -euo pipefail
DIR=$1
[ -x "$DIR/bin/docker-compose" ] && exit 0
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q --disable-pip-version-check "cython<3" wheel setuptools
"$DIR/bin/pip" install -q --disable-pip-version-check --no-build-isolation "pyyaml==5.4.1"
"$DIR/bin/pip" install -q --disable-pip-version-check "docker-compose==1.29.2"
"$DIR/bin/docker-compose" version --short
