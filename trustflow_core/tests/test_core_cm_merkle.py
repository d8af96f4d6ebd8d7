"""RFC 9162 Merkle hashing and proofs (capsule_manager_protocol.merkle) against the published
Certificate Transparency vectors (tests/data/rfc6962_vectors.json), and every proof of trees up
to 40 leaves round-tripping, with corrupted proofs refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trustflow_core.roles.capsule_manager_protocol import merkle
from trustflow_core.roles.capsule_manager_protocol.merkle import ProofError

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "rfc6962_vectors.json").read_text()
)
LEAVES = [merkle.leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots"]]


def test_roots_match_the_reference_tree() -> None:
    assert merkle.root([]).hex() == VECTORS["empty_root"]
    for n in range(1, len(LEAVES) + 1):
        assert merkle.root(LEAVES[:n]) == ROOTS[n - 1], n


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['leaf']}-{c['size']}")
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    index, size = case["leaf"] - 1, case["size"]
    proof = [bytes.fromhex(h) for h in case["proof"]]
    assert merkle.inclusion_proof(index, LEAVES[:size]) == proof
    merkle.verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, size, merkle.leaf_hash(b"WrongLeaf"), proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, size * 2, LEAVES[index], proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, size, LEAVES[index], [*proof, ROOTS[0]], ROOTS[size - 1])


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda c: f"{c['first']}-{c['second']}"
)
def test_consistency_vectors(case: dict[str, Any]) -> None:
    first, second = case["first"], case["second"]
    proof = [bytes.fromhex(h) for h in case["proof"]]
    assert merkle.consistency_proof(first, LEAVES[:second]) == proof
    r1, r2 = ROOTS[first - 1], ROOTS[second - 1]
    merkle.verify_consistency(first, second, r1, r2, proof)
    if proof:
        with pytest.raises(ProofError):
            merkle.verify_consistency(first, second, r2, r1, proof)
        with pytest.raises(ProofError):
            merkle.verify_consistency(first, second, r1, r2, proof[:-1])
        flipped = [bytes([proof[0][0] ^ 16]) + proof[0][1:], *proof[1:]]
        with pytest.raises(ProofError):
            merkle.verify_consistency(first, second, r1, r2, flipped)


def test_every_proof_round_trips_and_corruption_is_refused() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(40)]
    for size in range(1, len(leaves) + 1):
        tree = leaves[:size]
        top = merkle.root(tree)
        for index in range(size):
            proof = merkle.inclusion_proof(index, tree)
            merkle.verify_inclusion(index, size, tree[index], proof, top)
            other = (index + 1) % size
            if other != index:
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(other, size, tree[index], proof, top)
        for first in range(size + 1):
            proof = merkle.consistency_proof(first, tree)
            merkle.verify_consistency(first, size, merkle.root(tree[:first]), top, proof)
            if 0 < first < size:
                changed = [*tree[: first - 1], merkle.leaf_hash(b"x"), *tree[first:]]
                with pytest.raises(ProofError):
                    merkle.verify_consistency(first, size, merkle.root(changed[:first]), top, proof)


def test_bad_sizes_and_hashes_are_refused() -> None:
    with pytest.raises(ProofError, match="outside"):
        merkle.inclusion_proof(3, LEAVES[:3])
    with pytest.raises(ProofError, match="bytes"):
        merkle.verify_inclusion(0, 2, LEAVES[0], [b"short"], ROOTS[1])
    with pytest.raises(ProofError, match="prefix"):
        merkle.verify_consistency(3, 2, ROOTS[2], ROOTS[1], [])
    with pytest.raises(ProofError, match="different roots"):
        merkle.verify_consistency(2, 2, ROOTS[1], ROOTS[2], [])
