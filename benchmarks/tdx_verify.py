"""Median time of a full TDX quote verification (DCAP: quote + QE report signatures, PCK chain
to the pinned Intel root, CRLs, TCB info, QE identity, TCB level selection, attributes, policy)
on the bundled dcap-qvl quote and collateral, next to baselines measured in the same run.

    .venv/bin/python benchmarks/tdx_verify.py [--rounds N] [--vectors DIR]

Rows:

* ``verify_quote, cold caches``: every certificate, CRL and collateral signature parsed and
  checked from scratch each round;
* ``verify_quote, warm caches``: the same quote and collateral again: certificates, CRLs and
  signature results come from the caches keyed by their exact bytes, windows are re-checked;
* ``TdxVerifier.verify (Passport report), warm``: the whole verifier path (JSON report, base64,
  bundled collateral, appraisal, UAL attributes, policy match);
* ``dcap-qvl verify (reference)``: ``dcap_qvl.verify`` on the same quote and collateral, when the
  ``dcap-qvl`` package is installed (it is not a dependency);
* ``baseline: 1 x ECDSA-P256 verify``: one ECDSA P-256/SHA-256 verification through
  ``cryptography``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.attestation import Attributes, Policy
from trustflow_tee_tdx.collateral import Collateral
from trustflow_tee_tdx.dcap import clear_caches, verify_quote
from trustflow_tee_tdx.report import make_report
from trustflow_tee_tdx.verifier import TdxVerifier

#: Inside the bundle's validity window (see the vectors' expected.json).
VERIFY_TIME = datetime(2025, 7, 1, tzinfo=timezone.utc)
POLICY = Policy((Attributes(str_tee_platform="TDX"),))


def default_vectors() -> Path:
    from trustflow_core.testing.support import compat_vectors_dir

    return compat_vectors_dir().parent / "attestation" / "tdx" / "dcap-qvl"


def median_ms(rounds: int, step: Callable[[], object]) -> float:
    step()  # warm-up
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--vectors", type=Path, default=None)
    args = parser.parse_args()
    vectors = args.vectors or default_vectors()
    quote = (vectors / "tdx_quote").read_bytes()
    collateral_text = (vectors / "tdx_quote_collateral.json").read_text()
    collateral = Collateral.from_json(collateral_text)
    assert verify_quote(quote, collateral, VERIFY_TIME).tcb_status == "UpToDate"

    def cold() -> None:
        clear_caches()
        verify_quote(quote, Collateral.from_json(collateral_text), VERIFY_TIME)

    def warm() -> None:
        verify_quote(quote, collateral, VERIFY_TIME)

    report = make_report(quote, collateral)
    verifier = TdxVerifier.from_settings({})
    loop = asyncio.new_event_loop()

    def full() -> None:
        loop.run_until_complete(verifier.verify(report, POLICY, now=VERIFY_TIME))

    key = ec.generate_private_key(ec.SECP256R1())
    message = quote[:632]
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()

    def one_ecdsa() -> None:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))

    rows = [
        ("verify_quote, cold caches", median_ms(args.rounds, cold)),
        ("verify_quote, warm caches", median_ms(args.rounds, warm)),
        ("TdxVerifier.verify (Passport report), warm", median_ms(args.rounds, full)),
    ]
    try:
        import dcap_qvl
    except ImportError:
        rows.append(("dcap-qvl verify (reference)", float("nan")))
        reference = None
    else:
        qvl_collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_text)
        now_secs = int(VERIFY_TIME.timestamp())
        assert dcap_qvl.verify(quote, qvl_collateral, now_secs).status == "UpToDate"
        reference = median_ms(args.rounds, lambda: dcap_qvl.verify(quote, qvl_collateral, now_secs))
        rows.append((f"dcap-qvl {dcap_qvl.__version__} verify (reference)", reference))
    rows.append(("baseline: 1 x ECDSA-P256 verify", median_ms(args.rounds, one_ecdsa)))
    loop.close()

    print(f"TDX quote verification, median of {args.rounds} rounds ({vectors / 'tdx_quote'})")
    for label, value in rows:
        ratio = f"  ({value / reference:.2f}x dcap-qvl)" if reference and label[0] != "b" else ""
        print(f"  {label:<46} {value:8.3f} ms{ratio}")
    if reference is None:
        print("  (install dcap-qvl to measure the reference: pip install 'dcap-qvl>=0.7,<0.8')")


if __name__ == "__main__":
    main()
