#!/usr/bin/env python3
"""The gateway's time per JWE request outside HTTP (issue 18 item 3), in one run (≈ 10-20 s):
what ``classify`` + ``JweFilter.open`` + ``JweFilter.seal_reply`` cost in this process, against
the bare cryptography every such request needs, measured in the same interleaved rounds.

Envelopes are made by the project's own ``jwe`` channel as the clients make them:

* **ecdh**: the RFC 7516 profile sealed to the app's P-256 key (``ECDH-ES+A128KW`` +
  A256GCM, ``iat``/``jti`` in the protected header, sent as ``application/jose+json`` as the
  online client does) with a fresh ephemeral key per envelope (as plain jwcrypto sends them:
  every one a miss of the filter's KEK cache); replay protection on (the listener default),
  every ``jti`` seen once per filter: each round opens the pool with a new filter, i.e. an
  empty replay cache;
* **ecdh-reused**: the same, sealed as the online client seals them: one ephemeral key for
  the whole pool (docs/online.md#ecdh-profile), so every envelope after the first is a hit
  of the KEK cache (the channels, and their caches, live as long as a gateway worker's);
* **rsa**: the upstream dialect (``RSA-OAEP-256`` + A128GCM, ``application/json``), as
  ``jwe_client.py`` and the (c) row of ``gateway.py`` send it.

Its **primitives** row times only the cryptography on the same envelopes, decoded beforehand:
for ecdh the ``epk`` point load (with its on-curve check), the P-256 ECDH, the Concat KDF, the
AES key unwrap, AES-GCM open of the request and AES-GCM seal of a reply under a fresh IV; for
ecdh-reused the same without the point load, the ECDH and the KDF (the KEK is known); for
rsa the RSA-OAEP-256 decryption and the two AES-GCM operations. The **overhead** is the
filter's time per request minus its primitives' (JSON, base64url, header checks, replay cache,
building the reply): what Python adds to the cryptography. Every envelope goes through the
filter and then through its primitives alone, each call timed (``time.perf_counter_ns``); the
figures are medians over all calls of ``--rounds`` rounds (the median of thousands of calls is
robust to the preemptions of a shared machine, where totals are not).

Informational (no target, exit 0): the issue's target is the gateway's JWE req/s against plain
pass-through, measured by ``gateway.py``; this tells where a JWE request's CPU goes.

    .venv/bin/python benchmarks/jwe_open.py [--envelopes 1000] [--rounds 5] [--key-bits 3072]
        [--profile ecdh|ecdh-reused|rsa]   # also print a cProfile of the filter's calls
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

REPLY = b"I got your message: hello\n"
ECDH_ALG = b"ECDH-ES+A128KW"


def b64(value: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class Case:
    """One envelope kind: the request bodies, their content type and, for each, a call doing
    only its cryptography (inputs decoded beforehand)."""

    def __init__(
        self,
        name: str,
        bodies: list[bytes],
        content_type: str,
        primitives: list[Callable[[], object]],
    ) -> None:
        self.name = name
        self.bodies = bodies
        self.content_type = content_type
        self.primitives = primitives


def ecdh_case(
    channel: Any, key: ec.EllipticCurvePrivateKey, count: int, name: str = "ecdh"
) -> Case:
    """``name`` ``ecdh-reused``: the primitives leave out what a KEK cache hit skips."""
    sealed = [channel.seal(b"hello", key.public_key()).jwe for _ in range(count)]
    bodies = [json.dumps({k: v for k, v in j.to_dict().items() if v}).encode() for j in sealed]
    otherinfo = struct.pack(">I", len(ECDH_ALG)) + ECDH_ALG + bytes(8) + struct.pack(">I", 128)
    curve, agreement, sha256 = ec.SECP256R1(), ec.ECDH(), hashes.SHA256()

    def primitive(jwe: Any) -> Callable[[], object]:
        epk = json.loads(b64(jwe.protected))["epk"]
        point = b"\x04" + b64(epk["x"]) + b64(epk["y"])
        wrapped, iv = b64(jwe.encrypted_key), b64(jwe.iv)
        sealed_body, aad = b64(jwe.ciphertext) + b64(jwe.tag), jwe.protected.encode("ascii")

        def agree() -> bytes:
            public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            shared = key.exchange(agreement, public)
            return ConcatKDFHash(sha256, 16, otherinfo).derive(shared)

        known = agree() if name == "ecdh-reused" else None

        def run() -> object:
            kek = known or agree()
            cek = aes_key_unwrap(kek, wrapped)
            AESGCM(cek).decrypt(iv, sealed_body, aad)
            return AESGCM(cek).encrypt(os.urandom(12), REPLY, b"x" * 40)

        return run

    return Case(name, bodies, "application/jose+json", [primitive(j) for j in sealed])


def rsa_case(channel: Any, key: rsa.RSAPrivateKey, count: int) -> Case:
    sealed = [channel.seal(b"hello", key.public_key()).jwe for _ in range(count)]
    bodies = [json.dumps(j.to_dict()).encode() for j in sealed]
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

    def primitive(jwe: Any) -> Callable[[], object]:
        wrapped, iv = b64(jwe.encrypted_key), b64(jwe.iv)
        sealed_body, aad = b64(jwe.ciphertext) + b64(jwe.tag), b64(jwe.aad)

        def run() -> object:
            cek = key.decrypt(wrapped, oaep)
            AESGCM(cek).decrypt(iv, sealed_body, aad)
            return AESGCM(cek).encrypt(os.urandom(12), REPLY, b"")

        return run

    return Case("rsa", bodies, "application/json", [primitive(j) for j in sealed])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envelopes", type=int, default=1000, help="ecdh envelopes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--key-bits", type=int, default=3072, help="RSA key size")
    parser.add_argument(
        "--profile", choices=("ecdh", "ecdh-reused", "rsa"), help="print a cProfile of one"
    )
    args = parser.parse_args()

    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class
    from trustflow_core.roles.gateway.jwe_filter import PROFILES, JweFilter, classify

    pm = get_plugin_manager()
    cls = backend_class(pm, ENVELOPE_CHANNEL, "jwe")
    channels = {p: cls.from_role({"profile": p}, pm=pm) for p in PROFILES}  # as the gateway
    rsa_key = rsa.generate_private_key(65537, args.key_bits)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rfc_fresh = cls.from_settings({"profile": "rfc", "epk_reuse_envelopes": 1})
    rfc = cls.from_settings({"profile": "rfc"})  # as the online client: one epk for the pool
    upstream = cls.from_settings({"profile": "upstream", "alg": "RSA-OAEP-256"})
    rsa_count = max(20, args.envelopes // 10)  # one RSA decryption is ~15 ECDH exchanges
    cases = [
        ecdh_case(rfc_fresh, ec_key, args.envelopes),
        ecdh_case(rfc, ec_key, args.envelopes, "ecdh-reused"),
        rsa_case(upstream, rsa_key, rsa_count),
    ]

    def filter_run(case: Case) -> None:
        gateway = JweFilter(rsa_key, channels, ecdh_key=ec_key)  # an empty replay cache
        for body in case.bodies:
            jwe = classify(body)
            assert jwe is not None
            gateway.seal_reply(gateway.open(jwe, case.content_type), REPLY)

    def run_round(case: Case, samples: dict[str, list[float]]) -> None:
        """Each envelope through the filter, then its primitives alone, timed call by call:
        the median of many calls is robust to the preemptions of a shared machine. New
        channels each round, as a newly started worker has: empty KEK caches, so every
        fresh-key envelope is a miss and every reused-key one but the first a hit."""
        fresh = {p: cls.from_role({"profile": p}, pm=pm) for p in PROFILES}
        gateway = JweFilter(rsa_key, fresh, ecdh_key=ec_key)  # an empty replay cache
        clock = time.perf_counter_ns
        content_type = case.content_type
        for body, primitives in zip(case.bodies, case.primitives, strict=True):
            started = clock()
            jwe = classify(body)
            gateway.seal_reply(gateway.open(jwe, content_type), REPLY)  # type: ignore[arg-type]
            middle = clock()
            primitives()
            samples["filter"].append((middle - started) / 1e3)
            samples["primitives"].append((clock() - middle) / 1e3)

    for case in cases:  # warm up (imports, caches)
        filter_run(case)
    samples = {c.name: {"filter": [], "primitives": []} for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            run_round(case, samples[case.name])

    print(
        f"per request (us): median over {args.rounds} rounds of every call [quartiles]; "
        f"RSA-{args.key_bits}, P-256"
    )
    for case in cases:
        medians = {}
        for what, label in (
            ("filter", "classify + open + seal_reply"),
            ("primitives", "primitives only (baseline)"),
        ):
            q1, medians[what], q3 = statistics.quantiles(samples[case.name][what], n=4)
            print(f"{case.name:11s} {label:30s} {medians[what]:8.1f}   [{q1:.1f}..{q3:.1f}]")
        full, bare = medians["filter"], medians["primitives"]
        print(
            f"{case.name:11s} overhead beyond the primitives {full - bare:8.1f}   "
            f"primitives / filter = {bare / full:.0%}"
        )

    if args.profile:
        import cProfile
        import pstats

        case = next(c for c in cases if c.name == args.profile)
        profiler = cProfile.Profile()
        profiler.runcall(filter_run, case)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
