"""The interact sample's app (standard library only), for bob and carol alike.

Serves ``POST /teeapp`` on ``--port``, answering ``Hi, I'm <name>. I got your message: <body>``,
and every ``--interval`` seconds POSTs ``{"message": "Hello from <name>!"}`` to ``--peer`` (the
local gateway's plain ``mtls_egress`` listener, which carries it over mutual TLS to the peer's
gateway) and prints ``response:  <answer>``, as the upstream interact-sample apps do. It knows
nothing about TLS: the gateways do all of it.

    python3 app.py --name Bob --port 8000 --peer http://127.0.0.1:31001/teeapp
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler_for(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/teeapp":
                self.send_error(404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            reply = f"Hi, I'm {name}. I got your message: ".encode() + body + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def say_hello(name: str, peer: str, timeout: float = 10.0) -> str:
    if not peer.startswith("http://"):
        raise ValueError(f"--peer must be an http:// URL (the local egress), got {peer!r}")
    body = json.dumps({"message": f"Hello from {name}!"}).encode()
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        peer, data=body, headers={"Content-Type": "application/json", "Connection": "close"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
        return reply.read().decode("utf-8", "replace").rstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="Bob or Carol")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--peer", required=True, help="URL of the local gateway's egress")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=0, help="stop after N hellos (0: never)")
    args = parser.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), handler_for(args.name))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sent = 0
    try:
        while args.count == 0 or sent < args.count:
            time.sleep(args.interval)
            try:
                print("response: ", say_hello(args.name, args.peer), flush=True)
            except (urllib.error.URLError, OSError) as exc:
                print(f"no answer from the peer yet: {exc}", flush=True)
            sent += 1
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
