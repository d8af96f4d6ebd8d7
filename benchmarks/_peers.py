"""The gateway's peers for ``benchmarks/gateway.py`` (issue 18 item 1) and the shared pieces of
``benchmarks/gateway_growth.py``: nginx and haproxy as plain reverse proxies to the same app,
a raw HTTP/1.1 load generator, per-request CPU of each proxy, and the gateway's hand-written
upstream client (``roles/gateway/h1client.py``) against ``aiohttp.ClientSession``.

The peers run in the foreground from configs generated in the benchmark's temporary directory,
listening on 127.0.0.1 only, never as system services; each one whose binary is missing is
skipped with the reason. Both stream bodies both ways like the gateway's plain pass-through
and keep upstream connections alive; nothing goes to disk (nginx: ``proxy_request_buffering
off`` with 128 KiB body reads, replies through 64 KiB memory buffers, no temp files).

CPU per request is the fair figure on a shared 2-CPU box: the Python load generator holds the
C proxies back, so their req/s says little about them, while the CPU time a proxy's processes
spend (``/proc/<pid>/stat`` utime + stime of the process and its live descendants, e.g. nginx
workers, haproxy threads) divided by the requests it relayed does not depend on how fast it
was driven.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _loopback import cpu_seconds, cpu_split, free_port, wait_port

#: The app every scenario reaches (also ``benchmarks/gateway.py``'s): the online demo's echo
#: on ``POST /teeapp`` plus a 64 KiB reply and a 1 MiB upload under the same route prefix.
APP_CODE = """
import sys
from aiohttp import web
from trustflow_core.demo.teeapp import create_app
REPLY_64K = bytes(range(256)) * 256
async def reply_64k(request):
    return web.Response(body=REPLY_64K, content_type="application/octet-stream")
async def upload(request):
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.Response(body=b"%d\\n" % size, content_type="text/plain")
app = create_app()
app.router.add_get("/teeapp/64k", reply_64k)
app.router.add_post("/teeapp/upload", upload)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            backlog=4096)
"""

#: The row of ``_floor.py``: a proxy on the gateway's stack without its features.
FLOOR = "floor (stack only)"
UPLOAD = 1024 * 1024
SMALL_REPLY = b"I got your message: hello\n"


@dataclass(frozen=True)
class Workload:
    """One request shape and the reply it must get."""

    name: str
    request: bytes
    reply: bytes | None  # exact body, or None: only its length is checked
    reply_length: int


def _request(method: str, path: str, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if method == "POST":
        head += f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


WORKLOADS = (
    Workload("small", _request("POST", "/teeapp", b"hello"), SMALL_REPLY, len(SMALL_REPLY)),
    Workload("64KiB reply", _request("GET", "/teeapp/64k", b""), None, 65536),
    Workload(
        "1MiB upload",
        _request("POST", "/teeapp/upload", b"\x5a" * UPLOAD),
        b"%d\n" % UPLOAD,
        len(b"%d\n" % UPLOAD),
    ),
)

#: Issue 18 targets: the gateway's CPU per request at most this many times nginx's.
TARGETS = {"small": 2.0, "64KiB reply": 1.5, "1MiB upload": 1.5}


class BadReply(Exception):
    """A reply that is not the expected 200 with the expected body."""


async def _read_reply(reader: asyncio.StreamReader, work: Workload) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    if status_line.split(b" ", 2)[1:2] != [b"200"]:
        raise BadReply(status_line.decode(errors="replace"))
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in rest.split(b"\r\n") if line)
    }
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        raise BadReply("reply without framing")
    if len(body) != work.reply_length or (work.reply is not None and body != work.reply):
        raise BadReply(f"unexpected reply body of {len(body)} bytes")


async def drive_raw(
    port: int,
    work: Workload,
    duration: float,
    in_flight: int,
    connections: int | None = None,
    warmup: float = 0.3,
) -> dict:
    """Send ``work`` over ``connections`` keep-alive connections (default: ``in_flight``),
    ``in_flight`` requests at a time, for ``duration`` s after a warm-up; connections are used
    in turn (first idle, first used), so every one of them carries requests. Return the
    latencies, the measured time, the errors and the warm-up request count (a connection that
    failed is replaced)."""
    count = connections or in_flight
    idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = collections.deque()
    for _ in range(count):
        idle.append(await asyncio.open_connection("127.0.0.1", port, limit=1 << 20))
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            reader, writer = idle.popleft()
            t0 = time.perf_counter()
            try:
                writer.write(work.request)
                await writer.drain()
                await _read_reply(reader, work)
            except (BadReply, OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                idle.append(await asyncio.open_connection("127.0.0.1", port, limit=1 << 20))
                continue
            latencies.append(time.perf_counter() - t0)
            idle.append((reader, writer))

    stop = time.perf_counter() + warmup
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    warm = len(latencies)
    latencies.clear()
    start = time.perf_counter()
    stop = start + duration
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    return {"latencies": latencies, "elapsed": elapsed, "errors": errors, "warmup": warm}


def summarize(slices: list[dict], cpu: float) -> dict[str, float]:
    """req/s over the slices, p50/p99 over all their requests, CPU µs per request (CPU over
    every request of the slices, warm-up included, as the CPU was counted)."""
    latencies = sorted(x for s in slices for x in s["latencies"])
    total = len(latencies) + sum(s["warmup"] for s in slices)
    return {
        "rps": len(latencies) / sum(s["elapsed"] for s in slices),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "errors": sum(s["errors"] for s in slices),
        "requests": len(latencies),
        "cpu_us_per_req": 1e6 * cpu / max(total, 1),
    }


NGINX_CONF = """daemon off;
master_process on;
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream app {{ server 127.0.0.1:{app_port}; keepalive 256; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        client_max_body_size 2m;
        client_body_buffer_size 128k;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""

HAPROXY_CONF = """global
    nbthread {workers}
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{port}
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:{app_port} maxconn 1024
"""


@dataclass
class Proxy:
    """A proxy under test: where it listens and the process whose CPU (with its descendants')
    is its cost."""

    name: str
    port: int
    pid: int


@dataclass
class Peers:
    """nginx and haproxy in front of the app on 127.0.0.1; ``skipped`` holds name -> reason."""

    work: Path
    app_port: int
    workers: int
    proxies: list[Proxy] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> None:
        """Start each peer whose binary is on ``$PATH`` or in /usr/sbin (Debian's place, not
        on a user's PATH); ``TRUSTFLOW_BENCH_PEERS_PATH`` replaces that search path."""
        search = os.environ.get("TRUSTFLOW_BENCH_PEERS_PATH")
        if search is None:
            search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        nginx, haproxy = shutil.which("nginx", path=search), shutil.which("haproxy", path=search)
        if nginx is None:
            self.skipped["nginx"] = "no nginx binary (Debian: apt-get install nginx-light)"
        else:
            port = free_port()
            conf = self.work / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    workers=self.workers, work=self.work, app_port=self.app_port, port=port
                )
            )
            cmd = [nginx, "-p", str(self.work), "-e", "stderr", "-c", str(conf)]
            self._spawn("nginx", cmd, port)
        if haproxy is None:
            self.skipped["haproxy"] = "no haproxy binary (Debian: apt-get install haproxy)"
        else:
            port = free_port()
            conf = self.work / "haproxy.cfg"
            conf.write_text(
                HAPROXY_CONF.format(workers=self.workers, app_port=self.app_port, port=port)
            )
            self._spawn("haproxy", [haproxy, "-db", "-f", str(conf)], port)

    def _spawn(self, name: str, cmd: list[str], port: int) -> None:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(port, proc, timeout=10)
        except SystemExit as exc:
            self.skipped[name] = f"did not start: {exc}"
            if proc.poll() is None:
                proc.kill()
            return
        self._procs.append(proc)
        self.proxies.append(Proxy(name, port, proc.pid))

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()  # nginx: fast shutdown; haproxy: hard stop
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_floor(app_port: int, processes: int) -> tuple[subprocess.Popen, int]:
    """Start ``_floor.py`` (``processes`` processes) in front of the app; return its parent
    process and port."""
    port = free_port()
    floor = Path(__file__).with_name("_floor.py")
    command = [sys.executable, str(floor), str(port), str(app_port), str(processes)]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


class PeerBench:
    """Every workload through every proxy, one slice per :meth:`run_round`, CPU per proxy."""

    def __init__(
        self, proxies: list[Proxy], app_pid: int, concurrency: int, seconds_per_slice: float
    ) -> None:
        self.proxies = proxies
        self.app_pid = app_pid
        self.concurrency = concurrency
        self.seconds = seconds_per_slice
        self.slices: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        self.cpu: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.system: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.app_cpu: dict[tuple[str, str], float] = collections.defaultdict(float)

    def run_round(self) -> None:
        for work in WORKLOADS:
            for proxy in self.proxies:
                key = (work.name, proxy.name)
                before, app_before = cpu_split(proxy.pid), cpu_seconds(self.app_pid)
                self.slices[key].append(
                    asyncio.run(drive_raw(proxy.port, work, self.seconds, self.concurrency))
                )
                user, system = cpu_split(proxy.pid)
                self.cpu[key] += user + system - sum(before)
                self.system[key] += system - before[1]
                self.app_cpu[key] += cpu_seconds(self.app_pid) - app_before

    def results(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for work in WORKLOADS:
            for proxy in self.proxies:
                key = (work.name, proxy.name)
                row = summarize(self.slices[key], self.cpu[key])
                row["app_cpu_us_per_req"] = summarize(self.slices[key], self.app_cpu[key])[
                    "cpu_us_per_req"
                ]
                row["system_us_per_req"] = summarize(self.slices[key], self.system[key])[
                    "cpu_us_per_req"
                ]
                out.setdefault(work.name, {})[proxy.name] = row
        return out


def peer_verdicts(
    results: dict[str, dict[str, dict[str, float]]],
) -> tuple[list[str], list[str]]:
    """Report lines and the missed targets (gateway CPU per request vs nginx's, per workload);
    without nginx in the results there is no verdict."""
    lines, missed = [], []
    for name, limit in TARGETS.items():
        rows = results.get(name, {})
        if "gateway" not in rows or "nginx" not in rows:
            lines.append(f"{name}: no gateway/nginx ratio (nginx skipped)")
            continue
        ratio = rows["gateway"]["cpu_us_per_req"] / rows["nginx"]["cpu_us_per_req"]
        extra = ""
        if "haproxy" in rows:
            extra = (
                f", vs haproxy "
                f"{rows['gateway']['cpu_us_per_req'] / rows['haproxy']['cpu_us_per_req']:.2f}x"
            )
        if FLOOR in rows:  # what the stack costs without the gateway's features
            extra += (
                f"; the stack alone (floor) "
                f"{rows[FLOOR]['cpu_us_per_req'] / rows['nginx']['cpu_us_per_req']:.2f}x"
            )
        verdict = "ok" if ratio <= limit else "MISSED"
        gateway, nginx = rows["gateway"], rows["nginx"]
        split = (
            f"; kernel {gateway['system_us_per_req']:.0f} vs {nginx['system_us_per_req']:.0f} us, "
            f"user {gateway['cpu_us_per_req'] - gateway['system_us_per_req']:.0f} vs "
            f"{nginx['cpu_us_per_req'] - nginx['system_us_per_req']:.0f} us"
        )
        lines.append(
            f"{name}: gateway CPU/request = {ratio:.2f}x nginx's "
            f"(target <= {limit:g}x: {verdict}){extra}{split}"
        )
        if ratio > limit:
            missed.append(f"{name} {ratio:.2f}x > {limit:g}x")
    return lines, missed


def print_peer_table(results: dict[str, dict[str, dict[str, float]]]) -> None:
    print(
        f"{'workload / proxy':<28}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
        f"{'proxy CPU us/req':>18}{'of it kernel':>14}{'app CPU us/req':>16}"
    )
    for work, rows in results.items():
        for proxy, r in rows.items():
            print(
                f"{work + ' / ' + proxy:<28}{r['rps']:>8.0f}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['errors']:>7}{r['cpu_us_per_req']:>18.0f}"
                f"{r['system_us_per_req']:>14.0f}{r['app_cpu_us_per_req']:>16.0f}"
            )


# --- the gateway's upstream client against aiohttp's ------------------------------------------


async def _client_slice(
    kind: str, app_port: int, work: Workload, seconds: float, conc: int
) -> tuple[int, float, int]:
    """``conc`` tasks send ``work`` to the app for ``seconds`` with one client; return
    (requests, this process's CPU seconds meanwhile, errors). The load generator *is* the
    client here, so this process's CPU per request is the client's cost."""
    import aiohttp
    from trustflow_core.roles.gateway.config import Address
    from trustflow_core.roles.gateway.h1client import H1Client

    method, path = work.request.split(b" ", 2)[:2]
    body = work.request.partition(b"\r\n\r\n")[2]
    headers = [("Host", "127.0.0.1")]
    if method == b"POST":
        headers.append(("Content-Type", "application/octet-stream"))
    count = errors = 0
    address = Address("127.0.0.1", app_port)
    url = f"http://127.0.0.1:{app_port}{path.decode()}"
    h1 = H1Client(pool_size=conc)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc))

    async def one() -> bytes:
        if kind == "h1client":
            r = await h1.request(
                address,
                method.decode(),
                path.decode(),
                headers,
                body if method == b"POST" else None,
                content_length=None,
                connect_timeout=5,
                read_timeout=15,
            )
            try:
                return await r.read(1 << 21) if r.status == 200 else b""
            finally:
                r.release()
        async with session.request(
            method.decode(), url, data=body if method == b"POST" else None, headers=dict(headers)
        ) as resp:
            return await resp.read() if resp.status == 200 else b""

    async def worker() -> None:
        nonlocal count, errors
        while time.perf_counter() < stop:
            data = await one()
            if len(data) == work.reply_length:
                count += 1
            else:
                errors += 1

    try:
        stop = time.perf_counter() + 0.3  # warm-up: connections open
        await asyncio.gather(*(worker() for _ in range(conc)))
        count = errors = 0
        cpu0 = time.process_time()
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(worker() for _ in range(conc)))
        return count, time.process_time() - cpu0, errors
    finally:
        h1.close()
        await session.close()


class ClientBench:
    """``H1Client`` vs ``aiohttp.ClientSession`` to the app directly (no proxy), small and
    64 KiB replies, one slice each per :meth:`run_round`."""

    KINDS = ("h1client", "aiohttp")

    def __init__(self, app_port: int, concurrency: int, seconds_per_slice: float) -> None:
        self.app_port = app_port
        self.concurrency = concurrency
        self.seconds = seconds_per_slice
        self.totals: dict[tuple[str, str], list[float]] = collections.defaultdict(
            lambda: [0, 0.0, 0]
        )

    def run_round(self) -> None:
        for work in WORKLOADS[:2]:
            for kind in self.KINDS:
                n, cpu, err = asyncio.run(
                    _client_slice(kind, self.app_port, work, self.seconds, self.concurrency)
                )
                t = self.totals[(work.name, kind)]
                t[0] += n
                t[1] += cpu
                t[2] += err

    def results(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for work in WORKLOADS[:2]:
            for kind in self.KINDS:
                n, cpu, err = self.totals[(work.name, kind)]
                out[f"{work.name} / {kind}"] = {
                    "requests": n,
                    "errors": err,
                    "client_cpu_us_per_req": 1e6 * cpu / max(n, 1),
                }
        return out

    def print_report(self) -> None:
        r = self.results()
        print("upstream client to the app directly (client process CPU per request):")
        for work in WORKLOADS[:2]:
            h1, aio = r[f"{work.name} / h1client"], r[f"{work.name} / aiohttp"]
            print(
                f"  {work.name:<12} h1client {h1['client_cpu_us_per_req']:>5.0f} us/req"
                f" ({h1['requests']:.0f} req, {h1['errors']:.0f} errors)   aiohttp "
                f"{aio['client_cpu_us_per_req']:>5.0f} us/req ({aio['requests']:.0f} req, "
                f"{aio['errors']:.0f} errors)   aiohttp/h1client = "
                f"{aio['client_cpu_us_per_req'] / max(h1['client_cpu_us_per_req'], 1e-9):.2f}x"
            )
