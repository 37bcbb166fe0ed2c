"""Merkle tree: published RFC 6962/9162 vectors, known answers and properties."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import EncodingError, IntegrityError
from heimdall_core.log.merkle import (
    EMPTY_ROOT,
    PROOF_HASHES_MAX,
    Frontier,
    ProofError,
    ProofRangeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# transparency-dev/merkle testdata: 98 inclusion and 98 consistency cases.
INCLUSION_VECTORS = 98
CONSISTENCY_VECTORS = 98
HAPPY_VECTORS_PER_KIND = 6

# One published case departs on purpose: it checks equal sizes with 12-byte placeholder
# roots ("don't care 1") and expects success, while Heimdall refuses any hash that is not
# 32 bytes before comparing anything. test_equal_sizes_verify_with_real_roots covers the
# same rule with real roots.
DELIBERATE_DEPARTURES = {
    "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": "must be 32 bytes",
}

# The eight leaves of the CT/RFC 6962 reference tree used by the published vectors.
REFERENCE_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
REFERENCE_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"

SETTINGS = settings(deadline=None, max_examples=60)


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(vector: dict[str, Any]) -> list[bytes]:
    return [_b64(h) for h in vector["proof"] or []]


def _check_vector(kind: str, vector: dict[str, Any]) -> None:
    if kind == "inclusion":
        verify_inclusion(
            _b64(vector["leafHash"]),
            vector["leafIdx"],
            vector["treeSize"],
            _proof(vector),
            _b64(vector["root"]),
        )
    else:
        verify_consistency(
            vector["size1"],
            vector["size2"],
            _b64(vector["root1"]),
            _b64(vector["root2"]),
            _proof(vector),
        )


def _vector_files(root: Path, kind: str) -> list[Path]:
    return sorted((root / "merkle" / kind).rglob("*.json"))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("inclusion", INCLUSION_VECTORS), ("consistency", CONSISTENCY_VECTORS)],
)
def test_published_vectors(testdata_dir: Path, kind: str, expected: int) -> None:
    base = testdata_dir / "merkle"
    wrong: list[str] = []
    accepted = rejected = departed = 0
    for path in _vector_files(testdata_dir, kind):
        name = path.relative_to(base).as_posix()
        vector = json.loads(path.read_text())
        try:
            _check_vector(kind, vector)
        except ProofError as err:
            rejected += 1
            if name in DELIBERATE_DEPARTURES:
                departed += 1
                if DELIBERATE_DEPARTURES[name] not in err.reason:
                    wrong.append(f"{name}: rejected for another reason: {err.reason}")
            elif not vector["wantErr"]:
                wrong.append(f"{name}: valid vector rejected: {err.reason}")
        else:
            accepted += 1
            if vector["wantErr"] or name in DELIBERATE_DEPARTURES:
                wrong.append(f"{name}: broken vector accepted")
    assert wrong == []
    assert accepted + rejected == expected
    assert accepted == HAPPY_VECTORS_PER_KIND - departed
    assert departed == sum(k.startswith(kind) for k in DELIBERATE_DEPARTURES)


def test_every_happy_path_vector_is_a_happy_path(testdata_dir: Path) -> None:
    happy = [
        p
        for kind in ("inclusion", "consistency")
        for p in _vector_files(testdata_dir, kind)
        if not json.loads(p.read_text())["wantErr"]
    ]
    names = sorted(p.name for p in happy)
    # Every case that must verify is a "happy path" or a single-entry/equal-size one.
    assert len(happy) == 2 * HAPPY_VECTORS_PER_KIND
    assert names.count("happy-path.json") == 10


def test_reference_tree_root_and_proofs_match_vectors(testdata_dir: Path) -> None:
    hashes = [leaf_hash(leaf) for leaf in REFERENCE_LEAVES]
    assert root_from_leaf_hashes(hashes).hex() == REFERENCE_ROOT_8
    checked = 0
    for kind in ("inclusion", "consistency"):
        for path in _vector_files(testdata_dir, kind):
            if path.name != "happy-path.json":
                continue
            v = json.loads(path.read_text())
            if kind == "inclusion":
                assert inclusion_proof(hashes, v["leafIdx"], v["treeSize"]) == _proof(v)
                assert root_from_leaf_hashes(hashes[: v["treeSize"]]) == _b64(v["root"])
            else:
                assert consistency_proof(hashes, v["size1"], v["size2"]) == _proof(v)
                assert root_from_leaf_hashes(hashes[: v["size1"]]) == _b64(v["root1"])
                assert root_from_leaf_hashes(hashes[: v["size2"]]) == _b64(v["root2"])
            checked += 1
    assert checked == 10


def test_hash_primitives() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert root_from_leaf_hashes([left]) == left


def test_proof_error_is_an_integrity_error_with_reason() -> None:
    with pytest.raises(IntegrityError, match="Merkle proof rejected") as info:
        verify_inclusion(b"x" * 32, 1, 1, [], b"x" * 32)
    assert isinstance(info.value, ProofError)
    assert "not below tree size" in info.value.reason


# --- an independent reference: RFC 9162 section 2.1.1 MTH, written recursively -------


def _mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return node_hash(_mth(hashes[:k]), _mth(hashes[k:]))


def _leaves(count: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(f"{salt}:{i}".encode()) for i in range(count)]


LEAVES_300 = _leaves(300)


def test_root_matches_recursive_definition_for_every_size_up_to_300() -> None:
    for size in range(301):
        assert root_from_leaf_hashes(LEAVES_300[:size]) == _mth(LEAVES_300[:size])


def _flip(value: bytes, bit: int) -> bytes:
    data = bytearray(value)
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return bytes(data)


def _inclusion_shape(index: int, size: int) -> tuple[str, ...]:
    """Side of each sibling, leaf first, from the RFC 9162 PATH recursion.

    The verifier only sees sides, never subtree sizes, so a proof checks against a
    wrong index or size exactly when that pair has the same shape.
    """
    sides: list[str] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if index < lo + k:
            sides.append("right")
            hi = lo + k
        else:
            sides.append("left")
            lo += k
    return tuple(reversed(sides))


def _consistency_shape(old: int, new: int) -> tuple[str, ...]:
    sides: list[str] = []
    lo, hi, m = 0, new, old
    while m != hi - lo:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if m <= k:
            sides.append("right")
            hi = lo + k
        else:
            sides.append("left")
            lo, m = lo + k, m - k
    return tuple(reversed(sides))


def _inclusion_verifies(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> bool:
    try:
        verify_inclusion(leaf, index, size, proof, root)
    except ProofError:
        return False
    return True


def _consistency_verifies(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    try:
        verify_consistency(old, new, old_root, new_root, proof)
    except ProofError:
        return False
    return True


@st.composite
def _tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, 300))
    return size, draw(st.integers(0, size - 1))


@SETTINGS
@given(_tree_and_index(), st.integers(0, 255), st.integers(0, 299))
def test_inclusion_proofs_verify_and_tampering_fails(
    tree: tuple[int, int], bit: int, other: int
) -> None:
    size, index = tree
    hashes = LEAVES_300[:size]
    root = root_from_leaf_hashes(hashes)
    proof = inclusion_proof(hashes, index, size)
    verify_inclusion(hashes[index], index, size, proof, root)
    assert len(proof) <= size.bit_length()

    for i in range(len(proof)):
        bad = [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]]
        assert not _inclusion_verifies(hashes[index], index, size, bad, root)
    assert not _inclusion_verifies(_flip(hashes[index], bit), index, size, proof, root)
    assert not _inclusion_verifies(hashes[index], index, size, proof, _flip(root, bit))
    assert not _inclusion_verifies(hashes[index], index, size, [*proof, root], root)
    if proof:
        assert not _inclusion_verifies(hashes[index], index, size, proof[:-1], root)

    wrong_index = other % size
    if wrong_index != index:
        assert _inclusion_shape(wrong_index, size) != _inclusion_shape(index, size)
        assert not _inclusion_verifies(hashes[index], wrong_index, size, proof, root)
    wrong_size = other + 1
    if wrong_size != size:
        same_shape = index < wrong_size and (
            _inclusion_shape(index, wrong_size) == _inclusion_shape(index, size)
        )
        assert _inclusion_verifies(hashes[index], index, wrong_size, proof, root) == same_shape
        # With the root of the tree really of that size, only an identical proof passes.
        other_root = root_from_leaf_hashes(LEAVES_300[:wrong_size])
        assert not _inclusion_verifies(hashes[index], index, wrong_size, proof, other_root)


@st.composite
def _two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, 300))
    return draw(st.integers(1, new)), new


@SETTINGS
@given(_two_sizes(), st.integers(0, 255), st.integers(1, 300))
def test_consistency_proofs_verify_and_tampering_fails(
    sizes: tuple[int, int], bit: int, other: int
) -> None:
    old, new = sizes
    old_root = root_from_leaf_hashes(LEAVES_300[:old])
    new_root = root_from_leaf_hashes(LEAVES_300[:new])
    proof = consistency_proof(LEAVES_300, old, new)
    verify_consistency(old, new, old_root, new_root, proof)
    assert len(proof) <= 2 * new.bit_length()

    for i in range(len(proof)):
        bad = [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]]
        assert not _consistency_verifies(old, new, old_root, new_root, bad)
    assert not _consistency_verifies(old, new, _flip(old_root, bit), new_root, proof)
    assert not _consistency_verifies(old, new, old_root, _flip(new_root, bit), proof)
    assert not _consistency_verifies(old, new, old_root, new_root, [*proof, new_root])
    if proof:
        assert not _consistency_verifies(old, new, old_root, new_root, proof[:-1])
    # A different history of the same sizes (a fork) never passes.
    forked_root = root_from_leaf_hashes([*LEAVES_300[: new - 1], leaf_hash(b"fork")])
    assert not _consistency_verifies(old, new, old_root, forked_root, proof)

    if other != old:
        assert not _consistency_verifies(other, new, old_root, new_root, proof)
    if other != new:
        same_shape = old < other and (
            _consistency_shape(old, other) == _consistency_shape(old, new)
        )
        accepted = _consistency_verifies(old, other, old_root, new_root, proof)
        assert accepted == same_shape


def test_equal_sizes_verify_with_real_roots() -> None:
    root = root_from_leaf_hashes(LEAVES_300[:5])
    verify_consistency(5, 5, root, root, [])
    assert consistency_proof(LEAVES_300, 5, 5) == []
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="empty root"):
        verify_consistency(0, 0, root, root, [])
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(5, 5, root, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="not empty"):
        verify_consistency(5, 5, root, root, [root])


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda h: verify_inclusion(h, 0, 1, [h] * (PROOF_HASHES_MAX + 1), h), "more than 64"),
        (lambda h: verify_inclusion(h, 0, 2, [h[:31]], h), "proof hash 0 must be 32"),
        (lambda h: verify_inclusion(h + b"\x00", 0, 1, [], h), "leaf hash must be 32"),
        (lambda h: verify_inclusion(h, -1, 1, [], h), "leaf index must be"),
        (lambda h: verify_inclusion(h, 0, 2**63, [], h), "tree size must be"),
        (lambda h: verify_inclusion(h, True, 2, [h], h), "leaf index must be"),
        (lambda h: verify_consistency(2, 1, h, h, []), "greater than new size"),
        (lambda h: verify_consistency(0, 1, EMPTY_ROOT, h, [h]), "every tree extends"),
        (lambda h: verify_consistency(1, 2, h, h, []), "proof is empty"),
        (lambda h: verify_consistency(1, 2, h, h, [h] * 65), "more than 64"),
    ],
)
def test_bounds_and_shapes_are_checked_first(call: Any, reason: str) -> None:
    with pytest.raises(ProofError, match=reason):
        call(LEAVES_300[0])


def test_overlong_and_short_proofs_are_named_as_such() -> None:
    hashes = LEAVES_300[:6]
    root = root_from_leaf_hashes(hashes)
    proof = inclusion_proof(hashes, 2, 6)
    with pytest.raises(ProofError, match="longer than the path"):
        verify_inclusion(hashes[2], 2, 6, [*proof, root], root)
    with pytest.raises(ProofError, match="shorter than the path"):
        verify_inclusion(hashes[2], 2, 6, proof[:-1], root)
    old_root = root_from_leaf_hashes(hashes[:3])
    proof = consistency_proof(hashes, 3, 6)
    with pytest.raises(ProofError, match="longer than the path"):
        verify_consistency(3, 6, old_root, root, [*proof, root])
    with pytest.raises(ProofError, match="shorter than the path"):
        verify_consistency(3, 6, old_root, root, proof[:-1])


def test_proof_generation_refuses_impossible_ranges() -> None:
    with pytest.raises(ProofRangeError):
        inclusion_proof(LEAVES_300[:4], 4, 4)
    with pytest.raises(ProofRangeError):
        inclusion_proof(LEAVES_300[:4], 0, 5)
    with pytest.raises(ProofRangeError):
        consistency_proof(LEAVES_300[:4], 0, 4)
    with pytest.raises(ProofRangeError):
        consistency_proof(LEAVES_300[:4], 3, 2)
    with pytest.raises(EncodingError):
        root_from_leaf_hashes([b"short"])


# --- Frontier ------------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.integers(0, 70), max_size=8), st.booleans())
def test_frontier_matches_root_at_every_batch(batches: list[int], one_by_one: bool) -> None:
    frontier = Frontier()
    done = 0
    for count in batches:
        batch = LEAVES_300[done : done + count]
        if one_by_one:
            for h in batch:
                frontier.append(h)
        else:
            frontier.extend(batch)
        done += len(batch)
        assert frontier.size == done
        assert frontier.root() == _mth(LEAVES_300[:done])
        restored = Frontier.from_bytes(frontier.to_bytes())
        assert restored.size == done
        assert restored.root() == frontier.root()
        assert restored.to_bytes() == frontier.to_bytes()


def test_frontier_every_size_and_copy_independence() -> None:
    frontier = Frontier()
    assert frontier.root() == EMPTY_ROOT
    for size, h in enumerate(LEAVES_300, start=1):
        frontier.append(h)
        assert frontier.root() == root_from_leaf_hashes(LEAVES_300[:size])
    assert Frontier.from_leaf_hashes(LEAVES_300).to_bytes() == frontier.to_bytes()
    snapshot = frontier.copy()
    frontier.append(LEAVES_300[0])
    assert snapshot.size == 300
    assert snapshot.root() == root_from_leaf_hashes(LEAVES_300)
    assert frontier.root() != snapshot.root()


def test_frontier_encoding_is_bounded_and_validated() -> None:
    good = Frontier.from_leaf_hashes(LEAVES_300[:7]).to_bytes()
    assert len(good) == 9 + 3 * 32
    bad_inputs = [
        b"",
        good[:-1],
        good + b"\x00",
        b"\x02" + good[1:],
        b"\x01" + (2**63).to_bytes(8, "big"),
        b"\x01" + (8).to_bytes(8, "big") + good[9:],
        b"\x01" + bytes(8) + b"\x00" * Frontier.BYTES_MAX,
    ]
    for data in bad_inputs:
        with pytest.raises(EncodingError):
            Frontier.from_bytes(data)
    assert Frontier.from_bytes(Frontier().to_bytes()).root() == EMPTY_ROOT
    with pytest.raises(EncodingError):
        Frontier().append(b"x" * 33)
    with pytest.raises(EncodingError):
        Frontier().extend([LEAVES_300[0], b"x"])
