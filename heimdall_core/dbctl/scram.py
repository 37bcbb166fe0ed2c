"""SCRAM-SHA-256 password verifiers in PostgreSQL's stored format (pure).

start-db sends the server a verifier, never the password: statements can end up in
the server log (a failing ``ALTER ROLE`` is logged whole), and a verifier there does
not let anyone log in. Format and derivation: RFC 5802 / RFC 7677, as stored in
``pg_authid.rolpassword``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SCRAM_SALT_BYTES_MIN = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_sha256_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` for ``password``.

    The password must be ASCII: SASLprep is then the identity, which is why Heimdall
    generates ASCII passwords.
    """
    if not password.isascii():
        raise ValueError("SCRAM verifier: password must be ASCII (SASLprep is not implemented)")
    if len(salt) < SCRAM_SALT_BYTES_MIN:
        raise ValueError(f"SCRAM verifier: salt must be at least {SCRAM_SALT_BYTES_MIN} bytes")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"
