"""The fuzzing engine: Hypothesis drives seed mutations through a target for a time budget.

A target (:class:`Target`) is a function of one ``bytes`` input, the seeds it starts from and
the exception types its API documents. :func:`run_for` feeds it mutated seeds (bit flips,
interesting integers, insertions, deletions, repeated slices, splices of two seeds, or plain
random bytes) until the budget is spent; an exception of a documented type is a correct
refusal, anything else (or an input slower than :data:`HANG_SECONDS`) fails the run with the
input Hypothesis shrank it to. Every failing input is also written to :func:`crash_dir`.

Environment: ``TRUSTFLOW_FUZZ_SECONDS`` (budget per target, default 10),
``TRUSTFLOW_FUZZ_SEED`` (the random seed; printed on failure to reproduce a run) and
``TRUSTFLOW_FUZZ_CRASH_DIR`` (default ``$TMPDIR/trustflow-fuzz-crashes``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

HANG_SECONDS = 20.0
CHUNK_EXAMPLES = 200
MAX_INPUT = 1 << 16
REGRESSIONS = Path(__file__).parent / "regressions"
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x0C, 0x10, 0x20, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
INTERESTING_INTS = (0, 1, 2, 4, 0x41, 0x42, 0x7F, 0xFF, 0x2000, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 63)
#: Text that parsers of JSON, YAML and expressions treat specially.
TOKENS = (
    b"null",
    b"true",
    b"false",
    b"0",
    b"-1",
    b"1e309",
    b"-0.0",
    b".nan",
    b".inf",
    b"NaN",
    b"Infinity",
    b'""',
    b"[]",
    b"{}",
    b"&a",
    b"*a",
    b"!!binary",
    b"\\u0000",
    b"\\ud800",
    b"\x00",
    b"\xff",
    b"\r\n",
    b": ",
    b"- ",
    b",",
    b'"',
    b"'",
    b"9" * 40,
    b"size(",
    b".map(",
)
#: Openers of nested structures, repeated deep.
OPENERS = (b"[", b"{", b"(", b"- ", b"!", b"-", b"{a: ", b'{"a":', b"[[", b"a.")


@dataclass(frozen=True)
class Target:
    """``run(data)`` must return or raise one of ``allowed`` (the documented errors)."""

    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], Sequence[bytes]]
    allowed: tuple[type[BaseException], ...]
    max_input: int = MAX_INPUT


class Hang(BaseException):
    """An input took longer than :data:`HANG_SECONDS` (a BaseException, so that Hypothesis
    stops at once instead of shrinking with more slow runs)."""


def budget_seconds() -> float:
    return float(os.environ.get("TRUSTFLOW_FUZZ_SECONDS", "10"))


def run_seed() -> int:
    configured = os.environ.get("TRUSTFLOW_FUZZ_SEED")
    return int(configured) if configured else random.SystemRandom().randrange(1 << 32)


def crash_dir() -> Path:
    default = Path(tempfile.gettempdir(), "trustflow-fuzz-crashes")
    return Path(os.environ.get("TRUSTFLOW_FUZZ_CRASH_DIR", default))


def save_crash(target: str, data: bytes) -> Path:
    path = crash_dir() / target / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def hang_alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in this (the main) thread after ``seconds``."""

    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"input still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def execute(target: Target, data: bytes) -> None:
    """Run one input; an undocumented exception propagates (after saving the input).

    ``cryptography``'s deprecation warnings about certificates that break RFC 5280 in ways
    OpenSSL (and so upstream) accepts, such as a serial number <= 0, are not failures: they
    are warnings in production, and the releases that turn them into ``ValueError`` meet
    loaders that already refuse it."""
    try:
        with hang_alarm(HANG_SECONDS), warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            target.run(data)
    except target.allowed:
        return
    except BaseException:
        save_crash(target.name, data)
        raise


# ---- mutations ---------------------------------------------------------------------------


def _position(draw: Any, data: bytearray) -> int:
    return int(draw(st.integers(0, max(len(data) - 1, 0))))


def _flip(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if data:
        data[_position(draw, data)] ^= 1 << draw(st.integers(0, 7))
    return data


def _byte(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if data:
        value = draw(st.one_of(st.sampled_from(INTERESTING_BYTES), st.integers(0, 255)))
        data[_position(draw, data)] = value
    return data


def _integer(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    width = draw(st.sampled_from((2, 4, 8)))
    if len(data) < width:
        return data
    value = draw(st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, (1 << 64) - 1)))
    value %= 1 << (8 * width)
    order = draw(st.sampled_from(("little", "big")))
    at = int(draw(st.integers(0, len(data) - width)))
    data[at : at + width] = value.to_bytes(width, order)
    return data


def _insert(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    at = int(draw(st.integers(0, len(data))))
    data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return data


def _delete(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    if data:
        at = _position(draw, data)
        del data[at : at + draw(st.integers(1, 64))]
    return data


def _truncate(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    return data[: int(draw(st.integers(0, len(data))))]


def _repeat(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    """Repeat a short slice many times (deep nesting, long runs, big counts)."""
    if data:
        at = _position(draw, data)
        piece = data[at : at + draw(st.integers(1, 8))]
        data[at:at] = piece * int(draw(st.integers(2, 3000)))
    return data


def _token(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    at = int(draw(st.integers(0, len(data))))
    cut = at + int(draw(st.integers(0, 8)))
    data[at:cut] = draw(st.sampled_from(TOKENS))
    return data


def _nest(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    """Open a structure a few thousand times (recursion limits)."""
    at = int(draw(st.integers(0, len(data))))
    data[at:at] = draw(st.sampled_from(OPENERS)) * int(draw(st.integers(50, 3000)))
    return data


def _splice(draw: Any, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    other = draw(st.sampled_from(seeds))
    cut = int(draw(st.integers(0, len(data))))
    return bytearray(data[:cut] + other[int(draw(st.integers(0, len(other)))) :])


MUTATIONS = (_flip, _byte, _integer, _insert, _delete, _truncate, _repeat, _token, _nest, _splice)


def inputs(seeds: Sequence[bytes], max_input: int = MAX_INPUT) -> st.SearchStrategy[bytes]:
    """Seeds with 0-5 stacked mutations (mostly), or random bytes."""

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 5))):
            data = draw(st.sampled_from(MUTATIONS))(draw, data, seeds)
        return bytes(data[:max_input])

    return st.one_of(mutated(), st.binary(max_size=512))


# ---- running -------------------------------------------------------------------------------


@dataclass
class RunStats:
    examples: int = 0
    chunks: int = 0
    seconds: float = 0.0


def run_for(target: Target, seconds: float, base_seed: int) -> RunStats:
    """Fuzz ``target`` for about ``seconds`` (whole chunks of :data:`CHUNK_EXAMPLES`
    examples, each with its own derived seed). Raises on the first undocumented exception."""
    seeds = [bytes(s) for s in target.seeds()]
    if not seeds:
        raise AssertionError(f"target {target.name} has no seeds")
    stats = RunStats()
    started = time.monotonic()

    def body(data: bytes) -> None:
        stats.examples += 1
        execute(target, data)

    while True:
        test = settings(
            max_examples=CHUNK_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )(given(inputs(seeds, target.max_input))(body))
        hypothesis_seed(base_seed + stats.chunks)(test)()
        stats.chunks += 1
        stats.seconds = time.monotonic() - started
        if stats.seconds >= seconds:
            return stats


def regression_inputs(target: str) -> list[Path]:
    """The stored inputs that once failed ``target`` (``regressions/<target>/*``)."""
    folder = REGRESSIONS / target
    return sorted(folder.iterdir()) if folder.is_dir() else []


# ---- multi-part inputs -------------------------------------------------------------------

SEPARATOR = b"\n\x00--\x00\n"


def join_parts(mode: int, *parts: bytes) -> bytes:
    """One input holding a mode byte and several byte strings (see :func:`split_parts`)."""
    return bytes((mode,)) + SEPARATOR.join(parts)


def split_parts(data: bytes, count: int) -> tuple[int, list[bytes]]:
    """``(mode, parts)``: the first byte and the rest split at :data:`SEPARATOR`, padded
    with empty parts to at least ``count``."""
    if not data:
        return 0, [b""] * count
    parts = data[1:].split(SEPARATOR)
    return data[0], parts + [b""] * (count - len(parts))
