"""The offline scenario on loopback with the static key exchange in place of the Capsule
Manager: a PSI app process asks the Data Capsule Proxy process for alice's and bob's inputs
(encrypted by the upstream tool), joins them on ``id``, puts the result; the result key is
registered with both inputs as ancestors, and the result decrypts with it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from test_core_offline_proxy_cli import start, stop

from trustflow_core.capsule import decrypt_file
from trustflow_core.testing.certs import write_app_identity
from trustflow_core.testing.fixtures import free_port

APP = r"""
import json, sys, urllib.request
from trustflow_core.demo.psi_app import join  # the example's join (upstream's pandas merge)
from trustflow_core.proto.secretflowapis.v2.sdc.data_capsule_proxy import (
    data_capsule_proxy_pb2 as pb,
)
from trustflow_core.wire import to_json

url, data = sys.argv[1], sys.argv[2]

def call(method, message):
    body = to_json(message, style="sdk").encode()  # what upstream psi.py sends (MessageToJson)
    req = urllib.request.Request(f"{url}/DataCapsuleProxy/{method}", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        reply = json.loads(r.read())
    assert reply == {"status": {"message": "success"}}, reply

for party in ("alice", "bob"):
    req = pb.GetInputDataRequest()
    req.cm_resource_config.endpoint = "127.0.0.1:1"
    req.cm_resource_config.scope = "default"
    req.cm_resource_config.op_name = "psi"
    req.cm_resource_config.resource_uri = f"breast_cancer_{party}"
    req.local_fs_config.path = f"{data}/{party}.csv.enc"
    req.dest_config.path = data
    call("GetInputData", req)

join(data)

req = pb.PutResultDataRequest()
req.cm_result_config.endpoint = "127.0.0.1:1"
req.cm_result_config.scope = "default"
req.cm_result_config.resource_uri = "join_uuid"
req.cm_result_config.ancestor_uuids.extend(["breast_cancer_alice", "breast_cancer_bob"])
req.source_config.path = f"{data}/join.csv"
req.local_fs_config.path = data
call("PutResultData", req)
"""


PSI_VECTORS = Path(__file__).resolve().parent / "data" / "psi"


def expected_join(case: str) -> bytes:
    """What upstream's psi.py (pandas.merge(alice, bob, on="id").to_csv(index=False)) wrote
    for the inputs of ``case`` (data/psi/manifest.json, generated with pandas)."""
    return (PSI_VECTORS / "cases" / case / "join.csv").read_bytes()


def test_psi_app_through_the_proxy(tmp_path, compat_dir, compat_manifest):
    data = tmp_path / "data"
    data.mkdir()
    write_app_identity(tmp_path)
    inputs = {"alice": "small.csv.enc", "bob": "large.csv.enc"}
    keys = {}
    for party, vector in inputs.items():
        entry = compat_manifest["data"][vector]
        (data / f"{party}.csv.enc").write_bytes((compat_dir / "data" / vector).read_bytes())
        keys[f"breast_cancer_{party}"] = (compat_dir / entry["key_b64_file"]).read_text().strip()
    keys_file = tmp_path / "keys.json"
    (tmp_path / "kx.json").write_text(json.dumps({"keys": keys, "keys_file": str(keys_file)}))

    port = free_port()
    proxy = start(tmp_path, data, port)
    try:
        app = subprocess.run(
            [sys.executable, "-c", APP, f"http://127.0.0.1:{port}", str(data)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop(proxy)
    assert app.returncode == 0, app.stderr

    plain = {
        p: (compat_dir / compat_manifest["data"][v]["plaintext"]).read_text()
        for p, v in inputs.items()
    }
    assert (data / "alice.csv").read_text() == plain["alice"]
    assert (data / "bob.csv").read_text() == plain["bob"]
    stored = json.loads(keys_file.read_text())
    result_key = base64.b64decode(stored["join_uuid"])
    decrypt_file(data / "join.csv.enc", tmp_path / "join.check", result_key)
    joined = (tmp_path / "join.check").read_bytes()
    manifest = json.loads((PSI_VECTORS / "manifest.json").read_text())
    case = manifest["cases"]["compat_small_large"]
    assert case["inputs_from_compat"] == [
        compat_manifest["data"][v]["plaintext"] for v in inputs.values()
    ]
    assert joined == expected_join("compat_small_large")
    assert joined.count(b"\n") > 1  # the inputs share ids
