"""Throughput and memory of the Data Capsule Proxy on local disk (loopback only, bounded).

    python benchmarks/data_capsule_proxy.py [--size-mib 1024] [--rounds 3] [--dir DIR]
        [--formats v1,v2] [--growth-mib 1,1024,4096 | --no-growth] [--keep]

**Speed** (issue 18, item 5). ``--rounds`` interleaved rounds on a file of ``--size-mib`` MiB of
random bytes in ``--dir`` (default: the system temp directory; the same disk for every step).
Each round runs, in this order: four plain copies of the file (1 MiB ``read``/``write``: the
baseline the issue names; ``readinto`` one reused buffer; for information ``readinto`` with the
proxy's early write-back and ``copy_file_range``), each with fsync, then per format the
PutResultData (encrypt) and the GetInputData (decrypt, of a capsule made once before the
rounds) through a ``trustflow data-capsule-proxy`` process over loopback
HTTP (the proxy fsyncs its output too), then the four copies again. Each operation's ratio is
taken against the faster user-space copy of its round (mean of before and after), so a machine
that speeds up or slows down between rounds moves both sides. Before every timed step: its
input is read (warm page cache for the copies and the proxy alike), ``sync`` runs (no step pays
for the write-back of the one before), and fresh memory is prefaulted (:func:`prefault`: no
step pays for the host handing memory back); every step's output is deleted before the next.
Decrypted output is checked byte-exact. Printed too: CPU seconds per GiB of each step (the
copies' in this process, the proxy's in its process).

**Cost growth** (issue 18, item 6). For each size of ``--growth-mib`` (default 1, 1024 and
4096 MiB; needs about three times the largest size on disk; ``--no-growth`` skips it), a *fresh*
proxy process encrypts (v2) and decrypts a file of that size; printed are the throughputs and
the peak RSS (VmHWM) of the process, and the ratio of the largest size's peak RSS to the
smallest's.

Targets: v2 decrypt and encrypt >= 90 % of the plain copy (median of the rounds' ratios);
peak RSS growth <= 1.5x from the smallest to the largest file; every proxy's peak RSS
< 150 MiB. The exit status is 0 when all hold, 1 otherwise. Figures and what was tried:
docs/data-capsule-proxy.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from _loopback import cpu_seconds, free_port
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MiB = 1 << 20
MB = 1e6
TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"
SPEED_TARGET = 0.9
GROWTH_TARGET = 1.5
RSS_LIMIT_MIB = 150


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


def warm(*paths: Path, fresh: int = 0) -> None:
    """Read ``paths`` (into the page cache), flush every dirty page of the machine, then
    prefault ``fresh`` bytes of page cache next to the first path (see :func:`prefault`)."""
    buf = bytearray(8 * MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    os.sync()
    if fresh:
        prefault(fresh, paths[0].parent)


def prefault(size: int, where: Path) -> None:
    """Write and delete a scratch file of ``size`` bytes in directory ``where`` just before a
    timed step, so that the page cache the step fills comes from memory the host backs right
    now (and freed in the same page-cache folios). On a VM with free page reporting
    (virtio-balloon; this build box), memory that stayed free for a couple of seconds is handed
    back to the host and costs a host page fault per page when the guest uses it again: seconds
    per GiB, charged to whichever step happens to allocate first. Prefaulting before every step
    charges that to no step. (The scratch file is deleted unsynced: no disk write.)"""
    buf = memoryview(bytearray(8 * MiB))
    scratch = where / ".prefault.bin"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        done = 0
        while done < size:
            done += os.write(fd, buf)
    finally:
        os.close(fd)
        os.unlink(scratch)


def _copy_read(fin: BinaryIO, fout: BinaryIO) -> None:
    while data := fin.read(MiB):
        fout.write(data)


def _copy_readinto(fin: BinaryIO, fout: BinaryIO) -> None:
    view = memoryview(bytearray(MiB))
    while n := fin.readinto(view):  # type: ignore[attr-defined]
        fout.write(view[:n])


def _copy_readinto_writeback(fin: BinaryIO, fout: BinaryIO) -> None:
    from trustflow_core.roles.data_capsule_proxy.transfer import EarlyWriteback

    _copy_readinto(fin, EarlyWriteback(fout))  # type: ignore[arg-type]


def _copy_kernel(fin: BinaryIO, fout: BinaryIO) -> None:
    while os.copy_file_range(fin.fileno(), fout.fileno(), 8 * MiB):
        pass


COPIES = {
    "read": _copy_read,
    "readinto": _copy_readinto,
    "+wb": _copy_readinto_writeback,
    "kernel": _copy_kernel,
}
"""Plain copies: ``read`` (1 MiB ``read``/``write``, the issue's baseline), ``readinto`` (one
reused 1 MiB buffer: the least a Python program moving bytes through user space does); for
information: ``+wb`` (``readinto`` with the proxy's early write-back, the same trick the proxy
uses) and ``kernel`` (``copy_file_range``, what ``cp`` does; no user-space copy)."""


def plain_copy(src: Path, dst: Path, how: str) -> tuple[float, float]:
    """(seconds, CPU seconds) to copy ``src`` to ``dst`` the ``how`` way, fsync included."""
    cpu = os.times()
    start = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        COPIES[how](fin, fout)
        fout.flush()
        os.fsync(fout.fileno())
    took = time.perf_counter() - start
    after = os.times()
    os.unlink(dst)
    return took, after.user - cpu.user + after.system - cpu.system


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

    def post(self, method: str, body: dict) -> tuple[float, float]:
        """(seconds, CPU seconds of the proxy process) of one request."""
        cpu = cpu_seconds(self.proc.pid)
        took = self._post(method, body)
        return took, cpu_seconds(self.proc.pid) - cpu

    def _post(self, method: str, body: dict) -> float:
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

    def encrypt(self, key_b64: str, src: Path, out_dir: Path) -> tuple[float, float]:
        body = {
            "data_key_b64": key_b64,
            "source_config": {"path": str(src)},
            "local_fs_config": {"path": str(out_dir)},
        }
        return self.post("PutResultData", body)

    def decrypt(self, key_b64: str, capsule: Path, out_dir: Path) -> tuple[float, float]:
        body = {
            "data_key_b64": key_b64,
            "local_fs_config": {"path": str(capsule)},
            "dest_config": {"path": str(out_dir)},
        }
        return self.post("GetInputData", body)

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


def speed(work: Path, size_mib: int, rounds: int, formats: list[str]) -> tuple[bool, float]:
    """The interleaved copy / encrypt / decrypt rounds; print them; return (target met, max
    peak RSS of the proxies in MiB)."""
    size = size_mib * MiB
    src = work / "input" / "data.bin"
    src.parent.mkdir()
    write_random(src, size)
    digest = sha256_of(src)
    key_b64 = base64.b64encode(os.urandom(16)).decode()
    proxies = {fmt: Proxy(work, fmt) for fmt in formats}
    ops = [f"{fmt} {op}" for fmt in formats for op in ("enc", "dec")]
    fresh = size + 256 * MiB
    # per round: {step: (seconds, CPU seconds)}; copies twice (before and after the proxy)
    runs: list[dict[str, list[tuple[float, float]]]] = []
    try:
        inputs = {}  # per format: a capsule the decrypt steps read (made once, untimed)
        for fmt, proxy in proxies.items():
            proxy.encrypt(key_b64, src, work / f"in-{fmt}")
            inputs[fmt] = work / f"in-{fmt}" / "data.bin.enc"
        for _ in range(rounds):
            run: dict[str, list[tuple[float, float]]] = {name: [] for name in [*COPIES, *ops]}

            def copies(run: dict[str, list[tuple[float, float]]] = run) -> None:
                for how in COPIES:
                    warm(src, fresh=fresh)
                    run[how].append(plain_copy(src, work / "copy.bin", how))

            copies()
            for fmt, proxy in proxies.items():
                out = work / f"out-{fmt}"
                warm(src, fresh=fresh)
                run[f"{fmt} enc"].append(proxy.encrypt(key_b64, src, out))
                shutil.rmtree(out)  # every step frees what it wrote before the next one
                warm(inputs[fmt], fresh=fresh)
                run[f"{fmt} dec"].append(proxy.decrypt(key_b64, inputs[fmt], out))
                if sha256_of(out / "data.bin") != digest:
                    raise SystemExit(f"{fmt}: decrypted output differs from the input")
                shutil.rmtree(out)
            copies()
            runs.append(run)
        peaks = {fmt: proxy.peak_rss_mib() for fmt, proxy in proxies.items()}
    finally:
        for proxy in proxies.values():
            proxy.stop()
    os.unlink(src)

    def rate(step: list[tuple[float, float]]) -> float:
        """MB/s of a step (the mean rate when it ran twice)."""
        return statistics.mean(size / seconds / MB for seconds, _ in step)

    def cpu(step: list[tuple[float, float]]) -> float:
        """CPU seconds per GiB of a step."""
        return statistics.mean(c for _, c in step) * (1 << 30) / size

    gcm_big = raw_gcm(min(size, 1024 * MiB), MiB)
    gcm_small = raw_gcm(min(size, 256 * MiB), 8126)
    print(f"file: {size_mib} MiB of random bytes in {work.parent} ({os.cpu_count()} cores), "
          f"{rounds} interleaved round(s), warm page cache, fsync in every step")  # fmt: skip
    print(f"raw AES-128-GCM, 1 core, 1 MiB calls   {gcm_big:8.0f} MB/s")
    print(f"raw AES-128-GCM, 1 core, 8126 B calls  {gcm_small:8.0f} MB/s")
    print(
        "MB/s per round; copies = mean of the copy before and after the proxy steps; "
        "baseline = the faster user-space copy (read or readinto); ratios against it"
    )
    head = f"{'round':6}{'read':>7}{'readinto':>9}{'+wb':>7}{'kernel':>8}{'baseline':>9}"
    print(head + "".join(f"{op:>10}{'':>6}" for op in ops))
    ratios: dict[str, list[float]] = {op: [] for op in ops}
    for i, run in enumerate(runs):
        base = max(rate(run["read"]), rate(run["readinto"]))
        line = f"{i + 1:<6}{rate(run['read']):7.0f}{rate(run['readinto']):9.0f}"
        line += f"{rate(run['+wb']):7.0f}"
        line += f"{rate(run['kernel']):8.0f}{base:9.0f}"
        for op in ops:
            ratios[op].append(rate(run[op]) / base)
            line += f"{rate(run[op]):10.0f}{ratios[op][-1]:6.0%}"
        print(line)
    print("CPU seconds per GiB (median of the rounds; copies: this process, proxy: its process)")
    print("".join(f"{name:>10}" for name in [*COPIES, *ops]))
    print("".join(
        f"{statistics.median(cpu(run[name]) for run in runs):10.2f}" for name in [*COPIES, *ops]
    ))  # fmt: skip
    ok = True
    for fmt in formats:
        enc, dec = ratios[f"{fmt} enc"], ratios[f"{fmt} dec"]
        print(f"{fmt}: encrypt {statistics.median(enc):.0%} ({min(enc):.0%}..{max(enc):.0%}), "
              f"decrypt {statistics.median(dec):.0%} ({min(dec):.0%}..{max(dec):.0%}) of the "
              f"baseline copy (median, range); proxy peak RSS {peaks[fmt]:.1f} MiB")  # fmt: skip
        if fmt == "v2":
            met = min(statistics.median(enc), statistics.median(dec)) >= SPEED_TARGET
            ok = ok and met
            print(f"target v2 encrypt and decrypt >= {SPEED_TARGET:.0%} of the plain copy "
                  f"(median): {'met' if met else 'NOT met'}")  # fmt: skip
    return ok, max(peaks.values())


def growth(work: Path, sizes_mib: list[int]) -> tuple[bool, float]:
    """A fresh v2 proxy per size: encrypt + decrypt; print throughput and peak RSS; return
    (target met, max peak RSS in MiB)."""
    print(f"cost growth: a fresh v2 proxy per file size, encrypt then decrypt, in {work.parent}")
    print(f"{'size MiB':>9}{'encrypt MB/s':>14}{'decrypt MB/s':>14}{'RSS idle MiB':>14}"
          f"{'RSS peak MiB':>14}")  # fmt: skip
    key_b64 = base64.b64encode(os.urandom(16)).decode()
    peaks = []
    for size_mib in sizes_mib:
        size = size_mib * MiB
        base = work / f"growth-{size_mib}"
        src = base / "input" / "data.bin"
        src.parent.mkdir(parents=True)
        write_random(src, size)
        proxy = Proxy(base, "v2")
        try:
            idle = proxy.peak_rss_mib()
            warm(src, fresh=min(size + 256 * MiB, 2048 * MiB))
            enc_s, _ = proxy.encrypt(key_b64, src, base / "enc")
            os.unlink(src)  # room on disk for the decrypted copy
            warm(base / "enc" / "data.bin.enc", fresh=min(size + 256 * MiB, 2048 * MiB))
            dec_s, _ = proxy.decrypt(key_b64, base / "enc" / "data.bin.enc", base / "dec")
            peak = proxy.peak_rss_mib()
            if (base / "dec" / "data.bin").stat().st_size != size:
                raise SystemExit(f"{size_mib} MiB: decrypted output has the wrong size")
        finally:
            proxy.stop()
            shutil.rmtree(base)
        peaks.append(peak)
        rates = f"{size / enc_s / MB:14.0f}{size / dec_s / MB:14.0f}"
        print(f"{size_mib:9}{rates}{idle:14.1f}{peak:14.1f}")
    ratio = peaks[-1] / peaks[0]
    met = ratio <= GROWTH_TARGET
    print(f"target peak RSS {sizes_mib[-1]} MiB / {sizes_mib[0]} MiB <= {GROWTH_TARGET}x: "
          f"{'met' if met else 'NOT met'} ({ratio:.2f}x)")  # fmt: skip
    return met, max(peaks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size of the speed rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds")
    parser.add_argument("--formats", default="v1,v2", help="result formats to measure")
    parser.add_argument("--growth-mib", default="1,1024,4096", help="file sizes of the growth run")
    parser.add_argument("--no-growth", action="store_true", help="skip the growth run")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed rounds")
    parser.add_argument("--dir", default=None, help="where to put the files (same disk)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if "v2" not in formats or not set(formats) <= {"v1", "v2"}:
        parser.error("--formats must list v2 (the target) and may add v1")
    sizes = sorted(int(s) for s in args.growth_mib.split(",") if s)
    if not args.no_growth and len(sizes) < 2:
        parser.error("--growth-mib needs at least two sizes")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="dcp-bench-", dir=args.dir))
    ok, peak = True, 0.0
    try:
        if not args.no_speed:
            ok, peak = speed(work, args.size_mib, args.rounds, formats)
        if not args.no_growth:
            grew_ok, grew_peak = growth(work, sizes)
            ok, peak = ok and grew_ok, max(peak, grew_peak)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rss_ok = peak < RSS_LIMIT_MIB
    print(f"target proxy peak RSS < {RSS_LIMIT_MIB} MiB: {'met' if rss_ok else 'NOT met'} "
          f"(max {peak:.1f} MiB)")  # fmt: skip
    return 0 if ok and rss_ok else 1


if __name__ == "__main__":
    sys.exit(main())
