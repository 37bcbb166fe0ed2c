"""RFC 6962 / RFC 9162 Merkle tree over SHA-256: roots, compact ranges, proofs (pure).

Every feed is one such tree over its frames, so a single event has a short inclusion
proof and two signed heads of a feed have a consistency proof; published vectors and
other CT tooling apply unchanged. Verification follows RFC 9162 sections 2.1.3.2 and
2.1.4.2 step by step, with every input bounded before any hashing is done.

No I/O here: callers hand in leaf hashes and get hashes or verdicts back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from heimdall_core.errors import EncodingError, IntegrityError, QueryError

HASH_BYTES = 32
# A tree of fewer than 2**64 leaves never needs more than 64 proof hashes (RFC 9162).
PROOF_HASHES_MAX = 64
# Sizes are stored as signed 64-bit integers (SQLite, msgpack ints), so stay below 2**63.
TREE_SIZE_MAX = 2**63 - 1

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

EMPTY_ROOT: bytes = _sha256(b"").digest()


class ProofError(IntegrityError):
    """A Merkle inclusion or consistency proof does not verify; ``reason`` says why."""

    def __init__(
        self,
        reason: str,
        *,
        feed: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.reason = reason
        super().__init__(f"Merkle proof rejected: {reason}", feed=feed, seq=seq)


class ProofRangeError(QueryError):
    """A proof was asked for sizes or an index the tree cannot have (caller's mistake)."""


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf: SHA-256(0x00 || data)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Root of the tree whose leaves have these hashes (EMPTY_ROOT for none)."""
    _check_hashes(hashes, "leaf hash")
    if not hashes:
        return EMPTY_ROOT
    return _level_root(hashes)


def _level_root(hashes: Sequence[bytes]) -> bytes:
    """Fold a non-empty run of validated hashes to its root, one tree level at a time.

    Carrying an unpaired last node up unchanged gives exactly RFC 6962's split at the
    largest power of two, and keeps the hot loop inside one list comprehension.
    """
    level = list(hashes)
    while len(level) > 1:
        paired = [
            _sha256(_NODE_PREFIX + left + right).digest()
            for left, right in zip(level[0::2], level[1::2], strict=False)
        ]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def _check_hashes(hashes: Iterable[bytes], what: str) -> None:
    # One C-level pass over the lengths: this runs on batches of thousands of leaves.
    lengths = set(map(len, hashes))
    if lengths - {HASH_BYTES}:
        raise EncodingError(f"every {what} must be {HASH_BYTES} bytes, got lengths {lengths}")


def _check_size(size: int, what: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= TREE_SIZE_MAX:
        raise ProofRangeError(f"{what} must be an int in 0..{TREE_SIZE_MAX}, got {size!r}")


def _split(n: int) -> int:
    """Largest power of two strictly below n (n >= 2), RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _lowest_set_bit(n: int) -> int:
    return (n & -n).bit_length() - 1


class Frontier:
    """Compact range [0, size): the roots of the perfect subtrees of a tree of ``size``.

    Enough to append more leaves and compute the root without the old leaves, so a
    writer keeps O(log n) state. ``_nodes`` holds one root per set bit of ``size``,
    largest subtree first.
    """

    __slots__ = ("_nodes", "_size")

    _FORMAT_VERSION = 1
    _HEADER_BYTES = 1 + 8
    # Version byte, size, and one hash per set bit of a size below 2**63.
    BYTES_MAX = _HEADER_BYTES + 63 * HASH_BYTES

    def __init__(self) -> None:
        self._size = 0
        self._nodes: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    @classmethod
    def from_leaf_hashes(cls, hashes: Sequence[bytes]) -> Frontier:
        frontier = cls()
        frontier.extend(hashes)
        return frontier

    def copy(self) -> Frontier:
        other = Frontier()
        other._size = self._size
        other._nodes = list(self._nodes)
        return other

    def append(self, leaf_hash: bytes) -> None:
        _check_hashes((leaf_hash,), "leaf hash")
        if self._size >= TREE_SIZE_MAX:
            raise ProofRangeError(f"tree would exceed {TREE_SIZE_MAX} leaves")
        self._push(leaf_hash, 0)

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append many leaves, hashing them as whole perfect subtrees where aligned."""
        _check_hashes(leaf_hashes, "leaf hash")
        if self._size + len(leaf_hashes) > TREE_SIZE_MAX:
            raise ProofRangeError(f"tree would exceed {TREE_SIZE_MAX} leaves")
        pos, total = 0, len(leaf_hashes)
        while pos < total:
            height = (total - pos).bit_length() - 1
            if self._size:
                # A subtree of 2**height leaves may only start at a multiple of 2**height.
                height = min(height, _lowest_set_bit(self._size))
            end = pos + (1 << height)
            self._push(_level_root(leaf_hashes[pos:end]), height)
            pos = end

    def _push(self, subtree_root: bytes, height: int) -> None:
        """Add a perfect subtree of 2**height leaves; size must be a multiple of it."""
        carry = self._size >> height
        node = subtree_root
        while carry & 1:
            node = node_hash(self._nodes.pop(), node)
            carry >>= 1
        self._nodes.append(node)
        self._size += 1 << height

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        node = self._nodes[-1]
        for left in reversed(self._nodes[:-1]):
            node = node_hash(left, node)
        return node

    def to_bytes(self) -> bytes:
        header = bytes([self._FORMAT_VERSION]) + self._size.to_bytes(8, "big")
        return header + b"".join(self._nodes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """Decode ``to_bytes`` output; rejects any other version, length or size."""
        if not cls._HEADER_BYTES <= len(data) <= cls.BYTES_MAX:
            raise EncodingError(f"frontier encoding has {len(data)} bytes, outside bounds")
        if data[0] != cls._FORMAT_VERSION:
            raise EncodingError(f"frontier encoding version {data[0]} is not supported")
        size = int.from_bytes(data[1:9], "big")
        if size > TREE_SIZE_MAX:
            raise EncodingError(f"frontier size {size} exceeds {TREE_SIZE_MAX}")
        body = data[cls._HEADER_BYTES :]
        if len(body) != size.bit_count() * HASH_BYTES:
            raise EncodingError(
                f"frontier of size {size} needs {size.bit_count()} hashes, got {len(body)} bytes"
            )
        frontier = cls()
        frontier._size = size
        frontier._nodes = [body[i : i + HASH_BYTES] for i in range(0, len(body), HASH_BYTES)]
        return frontier

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, leaf side first."""
    _check_size(size, "tree size")
    _check_size(index, "leaf index")
    if not index < size <= len(leaf_hashes):
        raise ProofRangeError(
            f"no inclusion proof for index {index} in a tree of size {size} "
            f"built from {len(leaf_hashes)} leaves"
        )
    _check_hashes(leaf_hashes[:size], "leaf hash")
    siblings: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            siblings.append(_level_root(leaf_hashes[mid:hi]))
            hi = mid
        else:
            siblings.append(_level_root(leaf_hashes[lo:mid]))
            lo = mid
    siblings.reverse()
    return siblings


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 section 2.1.4.1, leaf side first.

    Equal sizes give the empty proof. An old size of 0 has no proof: every tree extends
    the empty tree, and the verifier refuses such a proof as meaningless.
    """
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    if not 0 < old_size <= new_size <= len(leaf_hashes):
        raise ProofRangeError(
            f"no consistency proof from size {old_size} to {new_size} "
            f"with {len(leaf_hashes)} leaves"
        )
    if old_size == new_size:
        return []
    _check_hashes(leaf_hashes[:new_size], "leaf hash")
    # Walk SUBPROOF(m, D[lo:hi], whole) down from the top; the recursion's appended
    # siblings come out top first, so they are reversed at the end.
    siblings: list[bytes] = []
    lo, hi, m, whole = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            siblings.append(_level_root(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            siblings.append(_level_root(leaf_hashes[lo : lo + k]))
            lo, m, whole = lo + k, m - k, False
    siblings.reverse()
    if not whole:
        siblings.insert(0, _level_root(leaf_hashes[lo:hi]))
    return siblings


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise ProofError(f"{what} must be {HASH_BYTES} bytes")


def _check_proof(proof: Sequence[bytes]) -> None:
    if len(proof) > PROOF_HASHES_MAX:
        raise ProofError(f"proof has {len(proof)} hashes, more than {PROOF_HASHES_MAX}")
    for i, value in enumerate(proof):
        _check_hash(value, f"proof hash {i}")


def _check_verify_size(size: int, what: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= TREE_SIZE_MAX:
        raise ProofError(f"{what} must be an int in 0..{TREE_SIZE_MAX}, got {size!r}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 section 2.1.3.2, step by step. Raises ProofError; returns None on success.
    """
    _check_verify_size(index, "leaf index")
    _check_verify_size(size, "tree size")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    _check_proof(proof)
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the path to the root")
    if r != root:
        raise ProofError("computed root does not match the expected root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root).

    RFC 9162 section 2.1.4.2, which covers 0 < old_size < new_size; equal sizes need an
    empty proof and equal roots. An old size of 0 is refused: every tree extends the
    empty tree, so callers decide that case without a proof. Raises ProofError.
    """
    _check_verify_size(old_size, "old size")
    _check_verify_size(new_size, "new size")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_proof(proof)
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is greater than new size {new_size}")
    if old_size == new_size:
        _verify_same_size(old_size, old_root, new_root, proof)
        return
    if old_size == 0:
        raise ProofError("old size is 0: every tree extends the empty tree, no proof applies")
    _verify_consistency_path(old_size, new_size, old_root, new_root, proof)


def _verify_same_size(size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    if proof:
        raise ProofError("sizes are equal but the proof is not empty")
    if old_root != new_root:
        raise ProofError(f"two different roots for the same size {size}")
    if size == 0 and old_root != EMPTY_ROOT:
        raise ProofError("a tree of size 0 must have the empty root")


def _verify_consistency_path(
    first: int, second: int, first_hash: bytes, second_hash: bytes, proof: Sequence[bytes]
) -> None:
    # Steps numbered as in RFC 9162 section 2.1.4.2.
    if not proof:  # 1
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if first & (first - 1) == 0:  # 2: first is a power of two, its root is a node
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1  # 3
    while fn & 1:  # 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # 5
    for c in path[1:]:  # 6
        if sn == 0:
            raise ProofError("proof is longer than the path to the new root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # 7
        raise ProofError("proof is shorter than the path to the new root")
    if fr != first_hash:
        raise ProofError("computed old root does not match the old root")
    if sr != second_hash:
        raise ProofError("computed new root does not match the new root")
