"""RFC 9162 Merkle tree hashing and proofs (SHA-256), for the Capsule Manager's audit log.

Hashes (RFC 9162 §2.1.1): the empty tree is ``SHA-256("")``, a leaf ``SHA-256(0x00 ‖ data)``,
an inner node ``SHA-256(0x01 ‖ left ‖ right)``; a tree of ``n`` leaves splits at ``k``, the
largest power of two smaller than ``n``. Inclusion proofs are generated as RFC 9162 §2.1.3.1
defines ``PATH``, consistency proofs as RFC 9162 §2.1.4.1 defines ``SUBPROOF``; they are
verified with the algorithms of RFC 9162 §2.1.3.2 and RFC 9162 §2.1.4.2. No maintained Python
library doing this under a licence compatible with ours was found (pymerkle is GPL-3.0+), so
it is implemented here and checked against the published Certificate Transparency vectors
(``trustflow_core/tests/data/rfc6962_vectors.json``).

Every function takes leaf *hashes* (:func:`leaf_hash` of the entries), not entries. The
verifiers return nothing and raise :class:`ProofError` naming the problem.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from ...errors import TrustflowError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(TrustflowError):
    """A Merkle proof does not verify (or is malformed)."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 ‖ data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash ``MTH`` of ``leaves`` (leaf hashes), computed bottom-up: each level
    pairs neighbours left to right and carries an odd last node up unchanged, which yields the
    same tree as RFC 9162's recursive definition."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """``PATH(index, leaves)`` (RFC 9162 §2.1.3.1): the audit path of leaf ``index``."""
    if not 0 <= index < len(leaves):
        raise ProofError(f"leaf index {index} is outside a tree of size {len(leaves)}")
    return _path(index, leaves)


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _split(len(d))
    if m < k:
        return [*_path(m, d[:k]), root(d[k:])]
    return [*_path(m - k, d[k:]), root(d[:k])]


def consistency_proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """``PROOF(first, leaves)`` (RFC 9162 §2.1.4.1): proves that the tree of the first
    ``first`` leaves is a prefix of the tree of ``leaves``. Empty when ``first`` is 0 or the
    whole tree."""
    if not 0 <= first <= len(leaves):
        raise ProofError(f"tree size {first} is outside a tree of size {len(leaves)}")
    if first in (0, len(leaves)):
        return []
    return _subproof(first, leaves, True)


def _subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if whole else [root(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], whole), root(d[k:])]
    return [*_subproof(m - k, d[k:], False), root(d[:k])]


def _check_hashes(proof: Sequence[bytes]) -> None:
    if any(len(h) != HASH_SIZE for h in proof):
        raise ProofError(f"proof hashes must be {HASH_SIZE} bytes")


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: ``leaf`` (a leaf hash) is leaf ``index`` of the tree of ``size``
    leaves whose root is ``expected_root``."""
    _check_hashes(proof)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is high")
    if not hmac.compare_digest(r, expected_root):
        raise ProofError(f"leaf {index} is not in the tree of size {size} with this root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: the tree of ``first`` leaves (root ``first_root``) is a prefix of the
    tree of ``second`` leaves (root ``second_root``)."""
    _check_hashes(proof)
    if not 0 <= first <= second:
        raise ProofError(f"tree size {first} cannot be a prefix of a tree of size {second}")
    if first == second:
        if proof:
            raise ProofError("a proof between equal tree sizes must be empty")
        if not hmac.compare_digest(first_root, second_root):
            raise ProofError(f"two different roots for the tree of size {first}")
        return
    if first == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is high")
    if not hmac.compare_digest(fr, first_root):
        raise ProofError(f"the tree of size {second} does not extend the tree of size {first}")
    if not hmac.compare_digest(sr, second_root):
        raise ProofError(f"consistency proof does not lead to the root of size {second}")


class Tree:
    """Leaf hashes appended one at a time, with the hash of every complete subtree kept
    (``levels[h][i]`` covers leaves ``i·2^h … (i+1)·2^h - 1``): the root, inclusion proofs
    and consistency proofs of any prefix cost O(log n) hashes instead of O(n), the same
    values as :func:`root`, :func:`inclusion_proof` and :func:`consistency_proof` of that
    prefix. Not thread-safe."""

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    def __len__(self) -> int:
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def append(self, leaf: bytes) -> None:
        self._levels[0].append(leaf)
        h = 0
        while len(self._levels[h]) % 2 == 0:
            if h + 1 == len(self._levels):
                self._levels.append([])
            level = self._levels[h]
            self._levels[h + 1].append(node_hash(level[-2], level[-1]))
            h += 1

    def truncate(self, size: int) -> None:
        """Keep the first ``size`` leaves (and the subtrees within them) only."""
        for h, level in enumerate(self._levels):
            del level[size >> h :]

    def _range(self, a: int, b: int) -> bytes:
        """``MTH`` of leaves ``a … b-1`` (``a`` a multiple of the power of two at or above
        ``b - a``, as in RFC 9162's splits)."""
        n = b - a
        if n & (n - 1) == 0:
            h = n.bit_length() - 1
            return self._levels[h][a >> h]
        k = _split(n)
        return node_hash(self._range(a, a + k), self._range(a + k, b))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= len(self):
            raise ProofError(f"tree size {size} is outside a tree of size {len(self)}")

    def root(self, size: int) -> bytes:
        """``MTH`` of the first ``size`` leaves."""
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._range(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """``PATH(index, first size leaves)``."""
        self._check_size(size)
        if not 0 <= index < size:
            raise ProofError(f"leaf index {index} is outside a tree of size {size}")
        proof: list[bytes] = []
        a, b = 0, size
        while b - a > 1:  # top-down; the RFC lists the path bottom-up
            k = _split(b - a)
            if index < a + k:
                proof.append(self._range(a + k, b))
                b = a + k
            else:
                proof.append(self._range(a, a + k))
                a += k
        return proof[::-1]

    def consistency_proof(self, first: int, size: int) -> list[bytes]:
        """``PROOF(first, first size leaves)``."""
        self._check_size(size)
        if not 0 <= first <= size:
            raise ProofError(f"tree size {first} is outside a tree of size {size}")
        if first in (0, size):
            return []
        proof: list[bytes] = []
        a, b, m, whole = 0, size, first, True
        while m != b - a:
            k = _split(b - a)
            if m <= k:
                proof.append(self._range(a + k, b))
                b = a + k
            else:
                proof.append(self._range(a, a + k))
                a, m, whole = a + k, m - k, False
        if not whole:
            proof.append(self._range(a, b))
        return proof[::-1]
