#!/usr/bin/env bash
# Make this machine able to build and run the trustflow image with podman when no container
# registry is reachable: install podman, runc and debootstrap (apt-get, only when missing) and
# build the local base image localhost/trustflow-base (Debian bookworm minbase + python3,
# python3-venv, ca-certificates) unless it exists. Idempotent; run as root.
#   deploy/podman-base.sh
# Then: CONTAINERS_CONF=$TRUSTFLOW_CONTAINERS_CONF BASE=localhost/trustflow-base deploy/build-image.sh
# Environment: TRUSTFLOW_CONTAINERS_CONF (default /var/cache/trustflow-deploy/containers.conf,
# written with default_ulimits = [] since podman's default ulimits can exceed the hard limits of
# a CI machine), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
CONF=${TRUSTFLOW_CONTAINERS_CONF:-/var/cache/trustflow-deploy/containers.conf}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
mkdir -p "$(dirname "$CONF")"
[ -s "$CONF" ] || printf '[containers]\ndefault_ulimits = []\n' > "$CONF"
export CONTAINERS_CONF=$CONF
if podman --runtime runc image exists localhost/trustflow-base; then
    exit 0
fi
echo "building localhost/trustflow-base (debootstrap bookworm minbase)"
root=$(mktemp -d /var/tmp/trustflow-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$MIRROR" >/dev/null
tar -C "$root" -c . | podman --runtime runc import - localhost/trustflow-base >/dev/null
echo "localhost/trustflow-base ready"
