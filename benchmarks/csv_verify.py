"""Median time of a full Hygon CSV chain verification (HSK -> CEK -> PEK -> report + MAC +
policy) on the bundled csv-rs vectors, with baselines measured in the same run.

    .venv/bin/python benchmarks/csv_verify.py [--rounds N] [--vectors DIR]

Rows:

* ``full chain, cold``: a fresh ``CsvVerifier`` per round, so all four SM2 signatures (HSK by
  HRK, CEK by HSK, PEK by CEK, report by PEK) are checked, with the default SM2 engine;
* ``full chain, cold, gmssl``: the same with the pure-Python gmssl engine forced (the fallback
  used where no libcrypto with SM2 is found);
* ``same verifier, warm``: one verifier reused: HSK/CEK/PEK come from its cache, only the report
  signature is checked;
* ``baseline: 4 x ECDSA-P256``: four ECDSA P-256/SHA-256 verifications of same-sized messages
  through ``cryptography`` -- what the same chain would cost on a NIST curve.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.attestation import Attributes, Policy
from trustflow_tee_csv import _openssl
from trustflow_tee_csv.sm import sm2_engine
from trustflow_tee_csv.verifier import CsvVerifier

POLICY = Policy((Attributes(str_tee_platform="CSV"),)).with_user_data(b"user data")


def default_vectors() -> Path:
    from trustflow_core.testing.support import compat_vectors_dir

    return compat_vectors_dir().parent / "attestation" / "csv" / "csv-rs"


async def median_ms(rounds: int, step: Callable[[], Awaitable[object]]) -> float:
    await step()  # warm-up (imports, library loading)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await step()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--vectors", type=Path, default=None)
    args = parser.parse_args()
    vectors = args.vectors or default_vectors()
    report = CsvVerifier.report_from_evidence(
        (vectors / "report.cert").read_bytes(),
        endorsements=(vectors / "hsk_cek.cert").read_bytes(),
    )

    async def cold() -> object:
        return await CsvVerifier().verify(report, POLICY)

    warm_verifier = CsvVerifier()

    async def warm() -> object:
        return await warm_verifier.verify(report, POLICY)

    key = ec.generate_private_key(ec.SECP256R1())
    messages = [b"\1" * 576, b"\2" * 1044, b"\3" * 1044, b"\4" * 180]
    signatures = [key.sign(m, ec.ECDSA(hashes.SHA256())) for m in messages]
    public = key.public_key()

    async def baseline() -> object:
        for message, signature in zip(messages, signatures, strict=True):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        return None

    rows = [
        (f"full chain, cold ({sm2_engine()} SM2)", await median_ms(args.rounds, cold)),
        ("same verifier, warm (cached chain)", await median_ms(args.rounds, warm)),
        ("baseline: 4 x ECDSA-P256 (cryptography)", await median_ms(args.rounds, baseline)),
    ]
    saved = _openssl._loaded
    _openssl._loaded = (None,)  # force the gmssl fallback
    try:
        rows.insert(
            1, ("full chain, cold (gmssl SM2)", await median_ms(max(5, args.rounds // 5), cold))
        )
    finally:
        _openssl._loaded = saved
    print(f"CSV verification, median of {args.rounds} rounds ({vectors}):")
    for label, value in rows:
        print(f"  {label:<42} {value:8.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
