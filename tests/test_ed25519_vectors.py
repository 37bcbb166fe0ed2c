"""The Ed25519 we sign feeds with, checked against all RFC 8032 test vectors.

The 1,024 vectors of the ed25519 reference test file (shipped by the
cryptography-vectors package) cover message lengths 0..1023. Each line reads
``secret||public:public:message:signature||message:`` in hex.
"""

from __future__ import annotations

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VECTOR_FILE = "asymmetric/Ed25519/sign.input"
VECTOR_COUNT = 1024
SECRET_BYTES = 32
SIGNATURE_BYTES = 64


def _vectors() -> list[tuple[bytes, bytes, bytes, bytes]]:
    with cryptography_vectors.open_vector_file(VECTOR_FILE, "r") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    vectors = []
    for line in lines:
        secret_public, public, message, signed, trailer = line.split(":")
        assert trailer == ""
        secret_public_raw = bytes.fromhex(secret_public)
        public_raw = bytes.fromhex(public)
        message_raw = bytes.fromhex(message)
        signed_raw = bytes.fromhex(signed)
        # The file repeats the public key after the secret and the message after the
        # signature; check the layout rather than trust it.
        assert secret_public_raw[SECRET_BYTES:] == public_raw
        assert signed_raw[SIGNATURE_BYTES:] == message_raw
        vectors.append(
            (secret_public_raw[:SECRET_BYTES], public_raw, message_raw, signed_raw[:SIGNATURE_BYTES])
        )
    return vectors


def test_all_rfc8032_vectors() -> None:
    checked = 0
    for secret, public, message, signature in _vectors():
        private_key = Ed25519PrivateKey.from_private_bytes(secret)
        derived = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert derived == public
        assert private_key.sign(message) == signature
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        checked += 1
    assert checked == VECTOR_COUNT


def test_a_vector_with_a_flipped_bit_fails() -> None:
    # Guards the test above against a verify() that accepts anything.
    secret, public, message, signature = _vectors()[1]
    bad = bytearray(signature)
    bad[0] ^= 1
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(public).verify(bytes(bad), message)
    assert Ed25519PrivateKey.from_private_bytes(secret).sign(message) != bytes(bad)
