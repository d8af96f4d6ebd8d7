"""Throughput and memory of the Data Capsule Proxy on local disk (loopback only, bounded).

    python benchmarks/data_capsule_proxy.py [--size-mib 1024] [--dir DIR] [--keep]

One run prints, for a file of ``--size-mib`` MiB of random bytes in ``--dir`` (default: the
system temp directory):

* plain copy of the file on the same disk (read + write + fsync): the I/O ceiling;
* the raw AES-GCM primitive on one core (``cryptography``), in 1 MiB calls and in the 8126-byte
  calls of the upstream format;
* for each result format (``v1`` upstream, ``v2`` authenticated): PutResultData (encrypt) and
  GetInputData (decrypt) of the file through a ``trustflow data-capsule-proxy`` process over
  loopback HTTP, in MB/s of plaintext, with the decrypted output checked byte-exact;
* the ratios to the plain copy, and the peak RSS (VmHWM) of each proxy process.

Targets (issue 5): v2 decrypt >= 50 % of the plain copy; proxy peak RSS < 150 MiB whatever the
file size. The exit status is 0 when both hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from _loopback import free_port
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MiB = 1 << 20
MB = 1e6
TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"


def write_random(path: Path, size: int) -> None:
    chunk = os.urandom(8 * MiB)  # repeated: content does not matter for throughput
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(8 * MiB):
            digest.update(data)
    return digest.hexdigest()


def plain_copy(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while data := fin.read(MiB):
            fout.write(data)
        fout.flush()
        os.fsync(fout.fileno())
    return time.perf_counter() - start


def raw_gcm(total: int, call: int) -> float:
    """MB/s of AES-128-GCM encryption on one core, ``call`` bytes per call."""
    aead = AESGCM(os.urandom(16))
    data = os.urandom(call)
    nonce = os.urandom(12)
    calls = max(1, total // call)
    start = time.perf_counter()
    for _ in range(calls):
        aead.encrypt(nonce, data, None)
    return calls * call / (time.perf_counter() - start) / MB


class Proxy:
    """A ``trustflow data-capsule-proxy`` process on 127.0.0.1."""

    def __init__(self, work: Path, fmt: str) -> None:
        from trustflow_core.testing.certs import write_app_identity

        cert, key = write_app_identity(work, "bench")
        (work / "kx.json").write_text(json.dumps({"keys": {}}))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                TRUSTFLOW, "data-capsule-proxy",
                "--cert-path", str(cert), "--private-key-path", str(key),
                "--port", str(self.port), "--key-exchange", "static",
                "--key-exchange-settings", str(work / "kx.json"),
                "--allowed-root", str(work), "--result-format", fmt,
                "--log-path", str(work / f"proxy-{fmt}.log"),
            ],
            env={**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "storage_local"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url("/health"), timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the proxy did not start") from None
                time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def post(self, method: str, body: dict) -> float:
        request = urllib.request.Request(
            self.url(f"/DataCapsuleProxy/{method}"),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=3600) as r:
                r.read()
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{method} failed: {exc.code} {exc.read().decode()}") from None
        return time.perf_counter() - start

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where to put the files (same disk)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="dcp-bench-", dir=args.dir))
    try:
        src = work / "input" / "data.bin"
        src.parent.mkdir()
        write_random(src, size)
        digest = sha256_of(src)
        copy_s = plain_copy(src, work / "copy.bin")
        os.unlink(work / "copy.bin")
        copy_rate = size / copy_s / MB
        gcm_big = raw_gcm(min(size, 1024 * MiB), MiB)
        gcm_small = raw_gcm(min(size, 256 * MiB), 8126)
        rows = []
        key_b64 = base64.b64encode(os.urandom(16)).decode()
        for fmt in ("v1", "v2"):
            proxy = Proxy(work, fmt)
            try:
                idle = proxy.peak_rss_mib()
                enc_dir, dec_dir = work / f"enc-{fmt}", work / f"dec-{fmt}"
                enc_s = proxy.post(
                    "PutResultData",
                    {
                        "data_key_b64": key_b64,
                        "source_config": {"path": str(src)},
                        "local_fs_config": {"path": str(enc_dir)},
                    },
                )
                dec_s = proxy.post(
                    "GetInputData",
                    {
                        "data_key_b64": key_b64,
                        "local_fs_config": {"path": str(enc_dir / "data.bin.enc")},
                        "dest_config": {"path": str(dec_dir)},
                    },
                )
                peak = proxy.peak_rss_mib()
            finally:
                proxy.stop()
            if sha256_of(dec_dir / "data.bin") != digest:
                raise SystemExit(f"{fmt}: decrypted output differs from the input")
            shutil.rmtree(enc_dir)
            shutil.rmtree(dec_dir)
            rows.append((fmt, size / enc_s / MB, size / dec_s / MB, idle, peak))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"file: {args.size_mib} MiB of random bytes in {work.parent} ({os.cpu_count()} cores)")
    print(f"plain copy (read+write+fsync)      {copy_rate:8.1f} MB/s   (I/O ceiling)")
    print(f"raw AES-128-GCM, 1 core, 1 MiB     {gcm_big:8.1f} MB/s")
    print(f"raw AES-128-GCM, 1 core, 8126 B    {gcm_small:8.1f} MB/s")
    print(f"{'format':8}{'encrypt MB/s':>14}{'decrypt MB/s':>14}{'enc/copy':>10}{'dec/copy':>10}"
          f"{'RSS idle MiB':>14}{'RSS peak MiB':>14}")  # fmt: skip
    for fmt, enc, dec, idle, peak in rows:
        print(
            f"{fmt:8}{enc:14.1f}{dec:14.1f}{enc / copy_rate:10.0%}{dec / copy_rate:10.0%}"
            f"{idle:14.1f}{peak:14.1f}"
        )
    v2 = next(r for r in rows if r[0] == "v2")
    ok_speed = v2[2] >= 0.5 * copy_rate
    ok_rss = all(r[4] < 150 for r in rows)
    print(f"target v2 decrypt >= 50% of plain copy: {'met' if ok_speed else 'NOT met'} "
          f"({v2[2] / copy_rate:.0%})")  # fmt: skip
    print(f"target proxy peak RSS < 150 MiB: {'met' if ok_rss else 'NOT met'} "
          f"(max {max(r[4] for r in rows):.1f} MiB)")  # fmt: skip
    return 0 if ok_speed and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
