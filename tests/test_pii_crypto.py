"""Keyed fingerprints and envelope encryption (the pure crypto)."""

from __future__ import annotations

import hmac
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import KeyMaterialError, PiiError
from heimdall_core.pii.blind_index import (
    BLIND_INDEX_BYTES,
    SUBJECT_ID_BYTES,
    IndexKeys,
    KeyedHash,
    blind_index,
    subject_id,
)
from heimdall_core.pii.envelope import (
    FORMAT_V1,
    NONCE_BYTES,
    OVERHEAD_BYTES,
    WRAPPED_DEK_BYTES,
    open_field,
    seal_field,
    unwrap_dek,
    wrap_dek,
)

KEYS = IndexKeys(blind_index_key=bytes(range(32)), subject_key=bytes(range(32, 64)))


def test_keyed_hash_matches_rfc4231_test_case_2() -> None:
    h = KeyedHash.from_key(b"Jefe")
    assert h.digest(b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@settings(deadline=None, max_examples=50)
@given(key=st.binary(min_size=1, max_size=64), msg=st.binary(max_size=300))
def test_keyed_hash_equals_hmac_sha256(key: bytes, msg: bytes) -> None:
    h = KeyedHash.from_key(key)
    assert h.digest(msg) == hmac.digest(key, msg, "sha256")
    assert h.digest(msg) == h.digest(msg)  # the precomputed state is not consumed


def test_keyed_hash_refuses_long_keys() -> None:
    with pytest.raises(KeyMaterialError):
        KeyedHash.from_key(bytes(65))


def test_blind_index_is_keyed_hmac_of_kind_and_value() -> None:
    bi = blind_index(KEYS, "email", "alice@example.com")
    expected = hmac.digest(KEYS.blind_index_key, b"email\x00alice@example.com", "sha256")[:16]
    assert bi == expected
    assert len(bi) == BLIND_INDEX_BYTES


def test_blind_index_same_value_same_index_other_kind_other_index() -> None:
    assert blind_index(KEYS, "email", "a@b.c") == blind_index(KEYS, "email", "a@b.c")
    assert blind_index(KEYS, "email", "a@b.c") != blind_index(KEYS, "username", "a@b.c")
    assert blind_index(KEYS, "email", "a@b.c") != blind_index(KEYS, "email", "a@b.d")
    other = IndexKeys(blind_index_key=bytes(32), subject_key=bytes(range(32)))
    assert blind_index(KEYS, "email", "a@b.c") != blind_index(other, "email", "a@b.c")


def test_subject_id_rule() -> None:
    sid = subject_id(KEYS, "email", "alice@example.com")
    msg = b"subject\x00email\x00alice@example.com"
    assert sid == hmac.digest(KEYS.subject_key, msg, "sha256")[:16]
    assert len(sid) == SUBJECT_ID_BYTES
    # Different key from the blind index: a subject id is not a blind index.
    assert sid != blind_index(KEYS, "email", "alice@example.com")


def test_index_keys_are_never_printed() -> None:
    text = repr(KEYS) + str(KEYS) + repr(KEYS.blind)
    assert KEYS.blind_index_key.hex() not in text
    assert "redacted" in text


def test_index_keys_must_differ_and_be_32_bytes() -> None:
    with pytest.raises(KeyMaterialError):
        IndexKeys(blind_index_key=bytes(32), subject_key=bytes(32))
    with pytest.raises(KeyMaterialError):
        IndexKeys(blind_index_key=bytes(31), subject_key=bytes(range(32)))


SUBJECT = bytes(range(16))
OTHER_SUBJECT = bytes(range(1, 17))


@settings(deadline=None, max_examples=50)
@given(value=st.text(max_size=200))
def test_field_round_trip(value: str) -> None:
    aead = AESGCM(bytes(32))
    blob = seal_field(aead, "email", SUBJECT, value)
    assert blob[0] == FORMAT_V1
    assert len(blob) == OVERHEAD_BYTES + len(value.encode())
    assert open_field(aead, "email", SUBJECT, blob) == value


def test_field_layout_is_version_nonce_ciphertext_tag() -> None:
    aead = AESGCM(bytes(32))
    nonce = bytes(range(NONCE_BYTES))
    blob = seal_field(aead, "email", SUBJECT, "x@y.z", random_bytes=lambda n: nonce[:n])
    assert blob[:1] == b"\x01" and blob[1:13] == nonce
    ad = b"\x01" + SUBJECT + b"email"
    assert blob[13:] == aead.encrypt(nonce, b"x@y.z", ad)


def test_field_is_bound_to_kind_and_subject() -> None:
    aead = AESGCM(bytes(32))
    blob = seal_field(aead, "email", SUBJECT, "alice@example.com")
    with pytest.raises(PiiError, match="does not authenticate") as e:
        open_field(aead, "username", SUBJECT, blob)
    assert "alice" not in str(e.value)
    with pytest.raises(PiiError, match="does not authenticate"):
        open_field(aead, "email", OTHER_SUBJECT, blob)
    with pytest.raises(PiiError, match="does not authenticate"):
        open_field(AESGCM(bytes(range(32))), "email", SUBJECT, blob)


def test_field_refuses_other_versions_and_short_blobs() -> None:
    aead = AESGCM(bytes(32))
    blob = seal_field(aead, "email", SUBJECT, "a")
    with pytest.raises(PiiError, match="format version 2"):
        open_field(aead, "email", SUBJECT, b"\x02" + blob[1:])
    with pytest.raises(PiiError, match="shorter"):
        open_field(aead, "email", SUBJECT, blob[:20])
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(PiiError):
        open_field(aead, "email", SUBJECT, bytes(flipped))


def test_dek_wrap_is_bound_to_subject_and_kek_version() -> None:
    kek = AESGCM(os.urandom(32))
    dek = os.urandom(32)
    wrapped = wrap_dek(kek, 3, SUBJECT, dek)
    assert len(wrapped) == WRAPPED_DEK_BYTES
    assert unwrap_dek(kek, 3, SUBJECT, wrapped) == dek
    with pytest.raises(KeyMaterialError) as e:
        unwrap_dek(kek, 3, OTHER_SUBJECT, wrapped)
    assert dek.hex() not in str(e.value)
    with pytest.raises(KeyMaterialError):
        unwrap_dek(kek, 4, SUBJECT, wrapped)
