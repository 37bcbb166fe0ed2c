"""Files of the PII key store: created private from the start, read with checks (I/O).

Every key file is 32 bytes, mode 0600, owned by the running user, in a 0700
directory; anything else is refused rather than used.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from heimdall_core.errors import KeyMaterialError
from heimdall_core.pii.envelope import KEY_BYTES

DIR_MODE = 0o700
FILE_MODE = 0o600
KEK_PREFIX = "kek-"
KEK_SUFFIX = ".key"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unsafe_mode(st: os.stat_result, want_dir: bool) -> str | None:
    if want_dir and not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not want_dir and not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return "is owned by another user"
    if st.st_mode & 0o077:
        want = DIR_MODE if want_dir else FILE_MODE
        return f"has mode {stat.S_IMODE(st.st_mode):o}; expected {want:o}"
    return None


def check_path(path: Path, want_dir: bool) -> None:
    problem = unsafe_mode(os.lstat(path), want_dir)
    if problem is not None:
        raise KeyMaterialError(f"PII key store: {path} {problem}; refusing to use it")


def create_private_file(path: Path, content: bytes) -> None:
    """Create ``path`` 0600 with ``content``; :class:`FileExistsError` if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have removed bits we rely on: be exact
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def create_key_file(path: Path) -> None:
    """Publish a new random key at ``path`` unless one is there (racing processes agree).

    The key is written and synced under a unique temporary name, then hard-linked
    to its final name: the link is atomic and never replaces, so a reader sees
    either no key or a whole one, and the loser of a race uses the winner's.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    create_private_file(tmp, os.urandom(KEY_BYTES))
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)


def read_key_file(path: Path) -> bytes:
    """The 32 bytes of a key file; :class:`FileNotFoundError` passes through (callers
    tell a missing key, or a KEK destroyed by a rotation, apart from a bad one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeyMaterialError(f"PII key store: cannot open {path}: {e.strerror}") from None
    try:
        problem = unsafe_mode(os.fstat(fd), want_dir=False)
        if problem is not None:
            raise KeyMaterialError(f"PII key store: {path} {problem}; refusing to use it")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise KeyMaterialError(f"PII key store: {path} must hold exactly {KEY_BYTES} bytes")
    return key


def destroy_file(path: Path) -> None:
    """Overwrite then unlink (best effort: copy-on-write media may keep old blocks)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, b"\x00" * size)  # key files are 32 bytes: one write
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)


def kek_name(version: int) -> str:
    return f"{KEK_PREFIX}{version:08d}{KEK_SUFFIX}"


def kek_versions(directory: Path) -> list[int]:
    versions = []
    for entry in os.listdir(directory):
        digits = entry.removeprefix(KEK_PREFIX).removesuffix(KEK_SUFFIX)
        if entry.startswith(KEK_PREFIX) and entry.endswith(KEK_SUFFIX) and digits.isdigit():
            versions.append(int(digits))
    return sorted(versions)
