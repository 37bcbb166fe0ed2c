"""Keyed fingerprints of personal values: blind indexes and subject ids (pure).

Both are HMAC-SHA256 truncated to 128 bits, under two different site keys, so
equal values can be found and joined without decrypting anything, while someone
without the key learns nothing from them (see docs/pii.md for why 128 bits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from heimdall_core.errors import KeyMaterialError

INDEX_KEY_BYTES = 32
"""Length of the blind-index key and of the subject key."""

BLIND_INDEX_BYTES = 16
"""Length of a blind index: 128 bits, collision-free at any realistic volume."""

SUBJECT_ID_BYTES = 16
"""Length of a subject id."""

_SHA256_BLOCK_BYTES = 64
SUBJECT_LABEL = b"subject\x00"
"""Prefix of the message a subject id is computed from (see :func:`subject_id`)."""


@dataclass(frozen=True, slots=True, repr=False)
class KeyedHash:
    """HMAC-SHA256 with the key's inner and outer pads hashed once.

    Equal to ``hmac.digest(key, msg, "sha256")`` (RFC 2104) but about 2.5x cheaper
    per call, which matters at a few fingerprints per record and >50k records/s.
    """

    _inner: hashlib._Hash = field(repr=False)
    _outer: hashlib._Hash = field(repr=False)

    @classmethod
    def from_key(cls, key: bytes) -> KeyedHash:
        # A key longer than a block would first be hashed (RFC 2104); ours never are.
        if not 0 < len(key) <= _SHA256_BLOCK_BYTES:
            raise KeyMaterialError(f"a keyed-hash key must be 1 to {_SHA256_BLOCK_BYTES} bytes")
        padded = key.ljust(_SHA256_BLOCK_BYTES, b"\x00")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
        return cls(inner, outer)

    def pads(self) -> tuple[Callable[[], hashlib._Hash], Callable[[], hashlib._Hash]]:
        """Fresh copies of the hashed inner and outer pads, for a caller that inlines
        :meth:`digest` in a per-record loop (the call itself costs a fifth of it)."""
        return self._inner.copy, self._outer.copy

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def __repr__(self) -> str:
        return "KeyedHash(<key redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class IndexKeys:
    """The two site keys that fingerprint values; never printed."""

    blind_index_key: bytes
    subject_key: bytes
    blind: KeyedHash = field(init=False)
    subject: KeyedHash = field(init=False)

    def __post_init__(self) -> None:
        if len(self.blind_index_key) != INDEX_KEY_BYTES or len(self.subject_key) != INDEX_KEY_BYTES:
            raise KeyMaterialError(f"index keys must be {INDEX_KEY_BYTES} bytes each")
        if self.blind_index_key == self.subject_key:
            raise KeyMaterialError("the blind-index key and the subject key must differ")
        object.__setattr__(self, "blind", KeyedHash.from_key(self.blind_index_key))
        object.__setattr__(self, "subject", KeyedHash.from_key(self.subject_key))

    def __repr__(self) -> str:
        return "IndexKeys(<keys redacted>)"


def blind_index(keys: IndexKeys, kind: str, canonical_value: str) -> bytes:
    """HMAC(blind-index key, kind NUL value)[:16]: same value and kind, same index."""
    return keys.blind.digest(f"{kind}\x00{canonical_value}".encode())[:BLIND_INDEX_BYTES]


def subject_id(keys: IndexKeys, kind: str, canonical_value: str) -> bytes:
    """HMAC(subject key, "subject" NUL kind NUL value)[:16]: the id of a person."""
    msg = SUBJECT_LABEL + f"{kind}\x00{canonical_value}".encode()
    return keys.subject.digest(msg)[:SUBJECT_ID_BYTES]
