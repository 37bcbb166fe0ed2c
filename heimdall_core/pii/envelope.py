"""Envelope encryption of personal fields (pure: keys and bytes in, bytes out).

Each field is sealed with AES-256-GCM under its subject's data key (DEK); each
DEK is sealed the same way under the site's key-encryption key (KEK). Both
layouts are ``version (1) | nonce (12) | ciphertext | tag (16)``; the associated
data binds a field to its kind and subject and a wrapped DEK to its subject and
KEK version, so a ciphertext moved elsewhere fails to open (docs/pii.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from heimdall_core.errors import KeyMaterialError, PiiError

FORMAT_V1 = 1
"""The one ciphertext format so far; the first byte of every sealed blob."""

KEY_BYTES = 32
"""AES-256 keys: DEKs and KEKs alike."""

NONCE_BYTES = 12
"""GCM's native nonce size; random nonces are safe far past any per-DEK volume."""

TAG_BYTES = 16

HEADER_BYTES = 1 + NONCE_BYTES
OVERHEAD_BYTES = HEADER_BYTES + TAG_BYTES
"""Bytes a sealed field adds to its UTF-8 plaintext (29)."""

FIELD_PLAINTEXT_BYTES_MAX = 64 * 1024
"""Longest field value sealed: canonical values are short; this bounds a bad record."""

WRAPPED_DEK_BYTES = OVERHEAD_BYTES + KEY_BYTES
"""Length of a wrapped data key (61)."""

_DEK_LABEL = b"heimdall-dek\x00"

RandomBytes = Callable[[int], bytes]


def split_bytes(blob: bytes, size: int) -> list[bytes]:
    """``blob`` cut into pieces of ``size`` bytes, sliced in C: random bytes are drawn
    once per batch and cut into thousands of keys or nonces."""
    starts = range(0, len(blob), size)
    return list(map(blob.__getitem__, map(slice, starts, range(size, len(blob) + size, size))))


def field_ad(kind: str, subject: bytes) -> bytes:
    """Associated data of a sealed field: version | subject (16) | kind (UTF-8)."""
    return bytes((FORMAT_V1,)) + subject + kind.encode()


def seal(aead: AESGCM, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Seal with a caller-chosen nonce (the batch path draws nonces in bulk)."""
    return bytes((FORMAT_V1,)) + nonce + aead.encrypt(nonce, plaintext, ad)


def open_sealed(aead: AESGCM, blob: bytes, ad: bytes) -> bytes:
    """Open a sealed blob; :class:`PiiError` if it is malformed or does not authenticate."""
    if len(blob) < OVERHEAD_BYTES:
        raise PiiError(f"sealed value is {len(blob)} bytes, shorter than {OVERHEAD_BYTES}")
    if blob[0] != FORMAT_V1:
        raise PiiError(f"sealed value has format version {blob[0]}, expected {FORMAT_V1}")
    try:
        return aead.decrypt(blob[1:HEADER_BYTES], blob[HEADER_BYTES:], ad)
    except InvalidTag:
        raise PiiError(
            "sealed value does not authenticate: corrupted, forged, or moved to another kind or subject"
        ) from None


def seal_field(
    aead: AESGCM, kind: str, subject: bytes, value: str, random_bytes: RandomBytes = os.urandom
) -> bytes:
    """Seal one field value under its subject's DEK (single-field path)."""
    plaintext = value.encode()
    if len(plaintext) > FIELD_PLAINTEXT_BYTES_MAX:
        raise PiiError(f"a {kind} value of {len(plaintext)} bytes exceeds {FIELD_PLAINTEXT_BYTES_MAX}")
    return seal(aead, random_bytes(NONCE_BYTES), plaintext, field_ad(kind, subject))


def open_field(aead: AESGCM, kind: str, subject: bytes, blob: bytes) -> str:
    """Open one sealed field; the kind and subject must be the ones it was sealed for."""
    return open_sealed(aead, blob, field_ad(kind, subject)).decode()


def dek_ad(subject: bytes, kek_version: int) -> bytes:
    """Associated data of a wrapped DEK: label | version | KEK version (4, BE) | subject."""
    return _DEK_LABEL + bytes((FORMAT_V1,)) + kek_version.to_bytes(4, "big") + subject


def wrap_dek(
    kek: AESGCM,
    kek_version: int,
    subject: bytes,
    dek: bytes,
    random_bytes: RandomBytes = os.urandom,
) -> bytes:
    """Seal a subject's DEK under a KEK version; bound to both."""
    if len(dek) != KEY_BYTES:
        raise KeyMaterialError(f"a data key must be {KEY_BYTES} bytes")
    return seal(kek, random_bytes(NONCE_BYTES), dek, dek_ad(subject, kek_version))


def unwrap_dek(kek: AESGCM, kek_version: int, subject: bytes, wrapped: bytes) -> bytes:
    """Open a wrapped DEK; :class:`KeyMaterialError` if it is not this subject's under this KEK."""
    try:
        dek = open_sealed(kek, wrapped, dek_ad(subject, kek_version))
    except PiiError as e:
        raise KeyMaterialError(
            f"wrapped data key of subject {subject.hex()} does not open under KEK v{kek_version}: {e}"
        ) from None
    if len(dek) != KEY_BYTES:
        raise KeyMaterialError(f"data key of subject {subject.hex()} has a wrong length")
    return dek
