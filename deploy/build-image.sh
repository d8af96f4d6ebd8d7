#!/usr/bin/env bash
# Build the trustflow image from the repository root with this machine's pip configuration and
# CA bundle passed as build secrets (never copied into a layer).
#   deploy/build-image.sh [TAG]            default TAG: trustflow:latest
# Environment: ENGINE (podman|docker; default podman if installed), BASE (default the
# Dockerfile's python:3.12-slim), BUILD_BASE, COMPILE, EXTRAS, PLUGINS, EXTRA_REQUIREMENTS (build
# args), CA_BUNDLE (default $PIP_CERT, $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt),
# PIP_INDEX_URL
# (default: pip's configured index, if any). With podman, ENGINE_ARGS defaults to
# "--runtime runc" when runc is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-trustflow:latest}
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
if [ "$ENGINE" = podman ] && [ -z "${ENGINE_ARGS+x}" ] && command -v runc >/dev/null; then
    ENGINE_ARGS="--runtime runc"
fi
CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
INDEX=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT
{
    echo "[global]"
    echo "cert = /run/secrets/ca_bundle"
    [ -z "$INDEX" ] || echo "index-url = $INDEX"
} > "$secrets/pip.conf"
args=(--secret "id=pip_conf,src=$secrets/pip.conf")
[ ! -s "$CA_BUNDLE" ] || args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
for arg in BASE BUILD_BASE COMPILE EXTRAS PLUGINS EXTRA_REQUIREMENTS; do
    [ -z "${!arg:-}" ] || args+=(--build-arg "$arg=${!arg}")
done
# shellcheck disable=SC2086 # ENGINE_ARGS is a list of words
exec "$ENGINE" ${ENGINE_ARGS:-} build -f deploy/Dockerfile "${args[@]}" -t "$TAG" .
