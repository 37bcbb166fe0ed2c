"""Site signing keys on disk: private modes, strict loading, no secret in reprs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from heimdall_core.errors import KeyMaterialError
from heimdall_core.keys import SigningKey, load_signing_key, save_signing_key


def test_save_and_load(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "keys" / "site.key"
    save_signing_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_signing_key(path).public == key.public
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        save_signing_key(path, SigningKey.generate())
    assert load_signing_key(path).public == key.public


def test_loading_refuses_unsafe_or_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    with pytest.raises(KeyMaterialError, match="heimdall init"):
        load_signing_key(path)
    save_signing_key(path, SigningKey.generate())
    os.chmod(path, 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        load_signing_key(path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(KeyMaterialError, match="32 bytes"):
        load_signing_key(path)
    path.write_text("ab" * 31 + "\n")
    with pytest.raises(KeyMaterialError, match="32 bytes"):
        load_signing_key(path)
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyMaterialError, match="regular file"):
        load_signing_key(directory)


def test_repr_shows_only_the_public_key() -> None:
    key = SigningKey.generate()
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    seed = key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
    assert seed not in repr(key) and seed not in str(key)
    assert key.public.hex() in repr(key)
