"""Gateway config files the fuzzer found to break the loader, given to the real command
``trustflow gateway -c FILE``: each must be refused at once with one ``Error:`` line naming the
problem (before: a RecursionError, OverflowError or ValueError traceback, a gateway serving
with a NaN/infinite timeout, a hang expanding YAML aliases). The inputs are also in
``fuzz/regressions/gateway_config``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
NATIVE = (
    'listeners: [{{name: a, address: "127.0.0.1:0", tcp_proxy: x}}]\n'
    'clusters: {{x: {{endpoints: ["127.0.0.1:1"], connect_timeout: {connect}}}}}\n'
    "request_timeout: {request}\n"
)


def alias_bomb() -> str:
    """An Envoy TLS transport socket whose typed_config expands to 10^8 values."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    bomb = "\n".join(" " * 10 + line for line in levels)
    return f"""static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{cluster: c, stat_prefix: t}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
{bomb}
  clusters:
  - name: c
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}
"""


CASES = {
    "deep nesting": ("[" * 3000, ": nested too deeply"),
    "deep mapping": ("listeners: " + "{a: " * 1500, ": nested too deeply"),
    "NaN connect timeout": (
        NATIVE.format(connect=".nan", request=15),
        ": clusters.x.connect_timeout: expected a duration ('0.25s', '250ms' or seconds) > 0, "
        "got nan",
    ),
    "infinite request timeout": (
        NATIVE.format(connect=0.25, request=".inf"),
        ": request_timeout: expected a duration ('0.25s', '250ms' or seconds) > 0, got inf",
    ),
    "YAML alias bomb in a TLS context": (
        alias_bomb(),
        ": static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.",
    ),
    "integer duration beyond any float": (
        NATIVE.format(connect="9" * 400, request=15),
        ": clusters.x.connect_timeout: expected a duration ('0.25s', '250ms' or seconds) > 0, "
        "got 99999",
    ),
    "integer of 5000 digits": (
        "max_body_bytes: " + "9" * 5000,
        ": not valid YAML: Exceeds the limit",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gateway_refuses_config_in_one_line(tmp_path: Path, case: str) -> None:
    text, reason = CASES[case]
    path = tmp_path / "gateway.yml"
    path.write_text(text)
    done = subprocess.run(
        [TRUSTFLOW, "gateway", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"config error: {path}{reason}"), lines[0]
