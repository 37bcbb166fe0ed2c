"""Signed feed heads: C2SP signed notes carrying C2SP tlog-checkpoint bodies (pure).

A checkpoint body is ``origin\\nsize\\nbase64(root)\\n`` plus optional extension lines.
A signed note is that text, a blank line, then one or more lines
``— <key name> <base64(key id || signature)>\\n``, where the key id is the first four
bytes of SHA-256(key name || 0x0A || 0x01 || Ed25519 public key) and each Ed25519
signature covers the text only. Because signatures cover the text alone, other sites
cosign a head by appending a line, and verifiers ignore lines from keys they do not know.

Parsing is strict so that one note has one meaning: canonical base64 only, decimal
sizes without leading zeros, no control characters, bounded size and signature count.
Specs: https://c2sp.org/signed-note and https://c2sp.org/tlog-checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from heimdall_core.errors import EncodingError, IntegrityError, KeyMaterialError
from heimdall_core.log.merkle import EMPTY_ROOT, HASH_BYTES, TREE_SIZE_MAX

# Whole signed note, text plus signature lines. A checkpoint with a few dozen
# cosignatures is under 8 KiB; anything far larger is an attack on the parser.
NOTE_BYTES_MAX = 16 * 1024
# The reference implementation's cap; the spec asks verifiers to accept at least 16.
NOTE_SIGNATURES_MAX = 100
KEY_ID_BYTES = 4
ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
SIGNATURE_TYPE_ED25519 = 0x01
# Longest decimal tree size: TREE_SIZE_MAX has 19 digits.
SIZE_DIGITS_MAX = len(str(TREE_SIZE_MAX))

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_SEPARATOR = b"\n\n"
# ASCII controls other than newline; the spec forbids them anywhere in a note.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SIZE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}", re.ASCII)


class NoteError(IntegrityError):
    """A signed note or checkpoint is malformed, oversized, or not signed as required."""


class NoteSignature(NamedTuple):
    """One signature line: key name, 4-byte key id, and the signature proper.

    A NamedTuple rather than a dataclass so callers may unpack it as the
    (name, key_id, signature) triple the signed-note spec describes.
    """

    name: str
    key_id: bytes
    signature: bytes


def key_id(name: str, public_key: bytes) -> bytes:
    """The recommended C2SP key id of an Ed25519 key: 4 bytes of a SHA-256."""
    material = name.encode() + b"\n" + bytes([SIGNATURE_TYPE_ED25519]) + public_key
    return hashlib.sha256(material).digest()[:KEY_ID_BYTES]


def _is_valid_key_name(name: str) -> bool:
    # Non-empty, no Unicode spaces (str.isspace covers them), no '+', no controls.
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and not _CONTROL.search(name)
    )


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not _is_valid_key_name(name):
        raise KeyMaterialError(
            f"invalid note key name {name!r}: it must be non-empty, without spaces or '+'"
        )


def _b64decode_canonical(text: str) -> bytes | None:
    """Standard base64 (RFC 4648 section 4), refusing every alternative spelling.

    Decoders ignore the unused low bits of the last character, so two strings can decode
    to the same bytes; re-encoding and comparing leaves exactly one accepted spelling.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(data).decode("ascii") != text:
        return None
    return data


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_text_line(line: str, what: str) -> None:
    if not isinstance(line, str) or not line:
        raise NoteError(f"{what} must be a non-empty string")
    if "\n" in line or _CONTROL.search(line):
        raise NoteError(f"{what} contains a newline or a control character")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what} is not encodable as UTF-8 (lone surrogate)") from None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head of one log: origin, tree size and RFC 6962 root (tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_text_line(self.origin, "checkpoint origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise NoteError(f"checkpoint size must be an int, got {self.size!r}")
        if not 0 <= self.size <= TREE_SIZE_MAX:
            raise NoteError(f"checkpoint size {self.size} is outside 0..{TREE_SIZE_MAX}")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_BYTES:
            raise NoteError(f"checkpoint root must be {HASH_BYTES} bytes")
        if self.size == 0 and self.root != EMPTY_ROOT:
            raise NoteError("a checkpoint of size 0 must carry the empty-tree root")
        if not isinstance(self.extensions, tuple):
            raise NoteError("checkpoint extensions must be a tuple of lines")
        for line in self.extensions:
            _check_text_line(line, "checkpoint extension line")

    def body(self) -> bytes:
        """The note text: origin, size, base64 root and extension lines, each ending in \\n."""
        lines = [self.origin, str(self.size), _b64encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines).encode()

    @classmethod
    def parse_body(cls, body: bytes) -> Checkpoint:
        """Parse a note text strictly; ``parse_body(c.body()) == c`` and nothing else parses."""
        text = _decode_note_text(body, "checkpoint body")
        if not text.endswith("\n"):
            raise NoteError("checkpoint body does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(f"checkpoint body has {len(lines)} lines, at least 3 are needed")
        origin, size_text, root_text, *extensions = lines
        if not _SIZE.fullmatch(size_text) or len(size_text) > SIZE_DIGITS_MAX:
            raise NoteError(f"checkpoint size {size_text[:32]!r} is not a canonical decimal")
        root = _b64decode_canonical(root_text)
        if root is None or len(root) != HASH_BYTES:
            raise NoteError("checkpoint root is not the canonical base64 of 32 bytes")
        return cls(origin, int(size_text), root, tuple(extensions))


def _decode_note_text(data: bytes, what: str) -> str:
    if not isinstance(data, bytes):
        raise NoteError(f"{what} must be bytes")
    if len(data) > NOTE_BYTES_MAX:
        raise NoteError(f"{what} has {len(data)} bytes, more than {NOTE_BYTES_MAX}")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise NoteError(f"{what} is not valid UTF-8") from None
    if _CONTROL.search(text):
        raise NoteError(f"{what} contains an ASCII control character other than newline")
    return text


def split_note(note: bytes) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into its text and well-formed signature lines (unverified).

    The text ends at the last blank line and keeps its final newline. Raises NoteError
    for any malformed, oversized or over-signed note.
    """
    _decode_note_text(note, "signed note")
    split = note.rfind(_SEPARATOR)
    if split < 0:
        raise NoteError("signed note has no blank line before its signatures")
    body, block = note[: split + 1], note[split + 2 :]
    if not block.endswith(b"\n"):
        raise NoteError("signed note has no signature lines or lacks the final newline")
    lines = block[:-1].split(b"\n")
    if len(lines) > NOTE_SIGNATURES_MAX:
        raise NoteError(f"signed note has {len(lines)} signatures, more than {NOTE_SIGNATURES_MAX}")
    return body, [_parse_signature_line(line.decode()) for line in lines]


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError("signature line does not start with an em dash and a space")
    name, space, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not space or not _is_valid_key_name(name):
        raise NoteError("signature line has no valid key name")
    raw = _b64decode_canonical(encoded)
    if raw is None or len(raw) <= KEY_ID_BYTES:
        raise NoteError(f"signature line of {name!r} does not hold canonical base64 of a signature")
    return NoteSignature(name, raw[:KEY_ID_BYTES], raw[KEY_ID_BYTES:])


def _check_text_to_sign(text: bytes) -> None:
    try:
        _decode_note_text(text, "note text")
    except NoteError as err:
        raise EncodingError(str(err)) from None
    if not text.endswith(b"\n"):
        raise EncodingError("a note text must end with a newline")


class NoteSigner:
    """Signs note texts with one Ed25519 key under one key name."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        self.name = name
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, self.public_key)

    def signature_line(self, text: bytes) -> bytes:
        """The line ``— name base64(key id || signature)\\n`` signing ``text``."""
        _check_text_to_sign(text)
        signed = _b64encode(self.key_id + self._key.sign(text))
        return f"{_SIGNATURE_PREFIX}{self.name} {signed}\n".encode()

    def sign_text(self, text: bytes) -> bytes:
        """A complete signed note for ``text`` (which must end with a newline)."""
        note = text + b"\n" + self.signature_line(text)
        if len(note) > NOTE_BYTES_MAX:
            raise EncodingError(f"signed note would have {len(note)} bytes, over {NOTE_BYTES_MAX}")
        return note

    def sign(self, checkpoint: Checkpoint) -> bytes:
        return self.sign_text(checkpoint.body())

    def vkey(self) -> str:
        """Verifier key ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        encoded = _b64encode(bytes([SIGNATURE_TYPE_ED25519]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.public_key)

    def __repr__(self) -> str:
        return f"NoteSigner({self.name!r}, key_id={self.key_id.hex()})"


class NoteVerifier:
    """Accepts notes that carry a valid signature from one known Ed25519 key."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_key_name(name)
        if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_BYTES:
            raise KeyMaterialError(f"an Ed25519 public key is {ED25519_PUBLIC_KEY_BYTES} bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, public_key)
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError as err:
            raise KeyMaterialError(f"unusable Ed25519 public key for {name!r}: {err}") from None

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key id>+<base64(0x01 || public key)>``; checks the key id."""
        name, _, rest = vkey.partition("+")
        id_hex, _, encoded = rest.partition("+")
        if not _KEY_ID_HEX.fullmatch(id_hex):
            raise KeyMaterialError(f"verifier key for {name!r} has no 8-hex-digit key id")
        raw = _b64decode_canonical(encoded)
        if raw is None or len(raw) != 1 + ED25519_PUBLIC_KEY_BYTES:
            raise KeyMaterialError(f"verifier key for {name!r} has no 33-byte base64 key")
        if raw[0] != SIGNATURE_TYPE_ED25519:
            raise KeyMaterialError(f"verifier key for {name!r} is not an Ed25519 key")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != id_hex:
            raise KeyMaterialError(f"verifier key for {name!r} names the wrong key id {id_hex}")
        return verifier

    def verify_text(self, note: bytes) -> bytes:
        """Return the text of ``note`` once a signature of this key over it verifies.

        Lines from other keys (cosigners) are ignored, but must be well formed. Every
        line naming this key must verify: one bad line rejects the whole note.
        """
        body, signatures = split_note(note)
        matched = False
        for sig in signatures:
            if sig.name != self.name or sig.key_id != self.key_id:
                continue
            try:
                self._key.verify(sig.signature, body)
            except InvalidSignature:
                raise NoteError(f"bad signature from key {self._label()}") from None
            matched = True
        if not matched:
            raise NoteError(f"note carries no signature from key {self._label()}")
        return body

    def verify(self, note: bytes, *, origin: str | None = None) -> Checkpoint:
        """Verify a signed checkpoint; with ``origin``, also require that origin."""
        checkpoint = Checkpoint.parse_body(self.verify_text(note))
        if origin is not None and checkpoint.origin != origin:
            raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
        return checkpoint

    def _label(self) -> str:
        return f"{self.name}+{self.key_id.hex()}"

    def __repr__(self) -> str:
        return f"NoteVerifier({self._label()!r})"


def add_signature(note: bytes, signer: NoteSigner) -> bytes:
    """Cosign an existing signed note: append ``signer``'s line over the same text.

    Does not verify the signatures already present; verify with the origin's key first.
    """
    body, signatures = split_note(note)
    if any(s.name == signer.name and s.key_id == signer.key_id for s in signatures):
        raise EncodingError(f"note already carries a signature from {signer!r}")
    if len(signatures) >= NOTE_SIGNATURES_MAX:
        raise EncodingError(f"note already has {len(signatures)} signatures")
    cosigned = note + signer.signature_line(body)
    if len(cosigned) > NOTE_BYTES_MAX:
        raise EncodingError(
            f"cosigned note would have {len(cosigned)} bytes, over {NOTE_BYTES_MAX}"
        )
    return cosigned
