"""Site signing keys on disk: created 0600 inside a 0700 directory, never logged.

A key file holds the 32-byte Ed25519 seed, hex-encoded, and a newline. The public key
is the feed id. Loading refuses a key file that others can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from heimdall_core.errors import KeyMaterialError

KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700


class SigningKey:
    """An Ed25519 private key whose repr and str never show the secret."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def private(self) -> Ed25519PrivateKey:
        return self._private

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()})"

    __str__ = __repr__


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700; tighten it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=KEY_DIR_MODE)
    os.chmod(path, KEY_DIR_MODE)


def write_secret_file(path: Path, data: bytes) -> None:
    """Create a new file readable by the owner only; never overwrite an existing one."""
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_signing_key(path: Path, key: SigningKey) -> None:
    seed = key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    try:
        write_secret_file(path, seed.hex().encode() + b"\n")
    except FileExistsError:
        raise KeyMaterialError(f"key file {path} already exists; refusing to overwrite it") from None


def load_signing_key(path: Path) -> SigningKey:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyMaterialError(f"key file {path} not found; run 'heimdall init' first") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMaterialError(
            f"key file {path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):o});"
            f" run 'chmod 600 {path}'")
    if not stat.S_ISREG(info.st_mode):
        raise KeyMaterialError(f"key file {path} is not a regular file")
    text = path.read_bytes().strip()
    try:
        seed = bytes.fromhex(text.decode("ascii"))
        if len(seed) != 32:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise KeyMaterialError(f"key file {path} is not a hex Ed25519 seed of 32 bytes") from None
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
