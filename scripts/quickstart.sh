#!/usr/bin/env bash
# Install Trustflow and all its plugins into .venv, then run the main job: the installed
# plugins; the three scenarios — online (attested JWE service), offline (PSI task with result
# registration), interact (two apps over mTLS); and the owner's local tools (keys, a file
# encrypted into the upstream data-capsule format and back, a sim attestation verified).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# the all-in-one target: every role's stack (trustflow-core[all]) and every plugin; the plugins
# come from this repository, so they are named too (the core first: pip resolves its extras'
# trustflow-* requirements to these paths)
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -e './trustflow_core[all]' -e ./plugins/tee_sim -e ./plugins/tee_tdx -e ./plugins/tee_csv \
    -e ./plugins/storage_local -e './plugins/storage_oss[s3,oss]' \
    -e ./plugins/channel_jwe -e ./plugins/channel_mtls
TF=.venv/bin/trustflow
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trustflow-demo.XXXXXX")
export TRUSTFLOW_SIM_DIR="$WORK/sim"
run() { echo; echo "\$ trustflow $*"; "$TF" "$@"; }

run plugins
run demo online
run demo offline
run demo interact
run util generate-rsa-keypair --private-key-file "$WORK/alice.key" --cert-file "$WORK/alice.crt"
run util generate-party-id --cert-file "$WORK/alice.crt"
KEY=$("$TF" util generate-data-key-b64 --bit-len 256)
printf '%s' "$KEY" > "$WORK/data.key"
seq 1 50000 | sed 's/^/row,/' > "$WORK/data.csv"
run util encrypt-file --source-file "$WORK/data.csv" --data-key-file "$WORK/data.key"
run util decrypt-file --source-file "$WORK/data.csv.enc" --dest-file "$WORK/data.csv.dec" --data-key-file "$WORK/data.key"
cmp "$WORK/data.csv" "$WORK/data.csv.dec"
echo "round trip OK: $(wc -c < "$WORK/data.csv") bytes"
run attest report --plat sim --user-data "$(printf 'hello' | sha256sum | cut -c1-64)" --out "$WORK/report.json"
run attest verify --report "$WORK/report.json" --allow-simulation \
    --user-data "$(printf 'hello' | sha256sum | cut -c1-64)"
echo
# the one-line summary (set -e: reached only when every step above succeeded)
echo "Quick start OK in ${SECONDS}s: plugins, demo online, demo offline, demo interact, util keys + encrypt/decrypt round trip, attest report + verify; files in $WORK"
