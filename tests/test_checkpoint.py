"""Signed notes and checkpoints: published vectors, round trips, tampering, strictness."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import EncodingError, IntegrityError, KeyMaterialError
from heimdall_core.log.checkpoint import (
    NOTE_BYTES_MAX,
    NOTE_SIGNATURES_MAX,
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    add_signature,
    key_id,
    split_note,
)
from heimdall_core.log.merkle import EMPTY_ROOT, leaf_hash

SETTINGS = settings(deadline=None, max_examples=80)
EM = "\u2014"

# --- published vectors ----------------------------------------------------------------
# golang.org/x/mod/sumdb/note documentation and tests: a private key seed, its verifier
# key, and the exact (deterministic Ed25519) signed note; plus a second signer's line.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + (
        f"\n{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
        "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
ENOCH_LINE = (
    f"{EM} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5o"
    "vTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
).encode()

# Real tree heads of the Go checksum database, a tlog-checkpoint in production. The
# second carries a cosignature from a key nobody here knows, which must be ignored.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTES = [
    (
        6476701,
        "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=",
        f"{EM} sum.golang.org Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95"
        "949rj4nPRYfvimWEPWL+o3GeoWwOoAw=\n",
    ),
    (
        15067302,
        "gJyioq6dwR9n+NjEWORfYmH+ubeYm3kH42BBQ0bTpYI=",
        f"{EM} sum.golang.org Az3grp1rvWOs5NKlr/xR4GLN/CDyzzakmt1o61uSxYKpK1SerqOP2ClbX/pe"
        "KUZjYnyomH5Xz7GZG3TpB7OeKn4E2ww=\n"
        f"{EM} test.example.com qTGhC/xIPQ0AXKHK6Y+9ypRfuvMZWPjRXM8NiOg5M1WREn07VQXyuIXM3N"
        "RNav3ieVFLUqDRK77PWDmL6w8w84UqeAw=\n",
    ),
    (
        65209736,
        "5+uGFjx6xBZG8ip1+wi77v+grwbhhukIrxEUS8PXvRo=",
        f"{EM} sum.golang.org Az3grnbssgK7ubgFX36gVETtNv0U23qxyAhAMai2QUfeGa3nB/akvkMdlUEr"
        "fcZz7l/R3cVtYspg3dxXABkGZZKdsQ8=\n",
    ),
]

# The example of c2sp.org/signed-note: a text with an empty line inside, non-ASCII.
C2SP_EXAMPLE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed \u00e8 subito sera.\n"
    "\n"
    f"{EM} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+Eh"
    "fLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
).encode()


def _go_signer() -> NoteSigner:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


def _sumdb_note(size: int, root: str, signatures: str) -> bytes:
    return f"go.sum database tree\n{size}\n{root}\n\n{signatures}".encode()


def test_go_reference_note_is_reproduced_byte_for_byte() -> None:
    signer = _go_signer()
    assert signer.vkey() == GO_VKEY
    assert signer.key_id.hex() == "c74f20a3"
    assert signer.sign_text(GO_TEXT) == GO_NOTE
    assert NoteVerifier.from_vkey(GO_VKEY).verify_text(GO_NOTE) == GO_TEXT


def test_go_reference_cosigned_note_verifies_for_both_keys() -> None:
    cosigned = GO_NOTE + ENOCH_LINE
    assert NoteVerifier.from_vkey(GO_VKEY).verify_text(cosigned) == GO_TEXT
    assert NoteVerifier.from_vkey(ENOCH_VKEY).verify_text(cosigned) == GO_TEXT
    with pytest.raises(NoteError, match="no signature"):
        NoteVerifier.from_vkey(ENOCH_VKEY).verify_text(GO_NOTE)


@pytest.mark.parametrize(("size", "root", "signatures"), SUMDB_NOTES)
def test_real_sumdb_checkpoints_verify(size: int, root: str, signatures: str) -> None:
    note = _sumdb_note(size, root, signatures)
    checkpoint = NoteVerifier.from_vkey(SUMDB_VKEY).verify(note, origin="go.sum database tree")
    assert checkpoint == Checkpoint("go.sum database tree", size, base64.b64decode(root))
    assert checkpoint.body() == note[: note.index(b"\n\n") + 1]


def test_c2sp_example_splits_at_the_last_blank_line() -> None:
    body, signatures = split_note(C2SP_EXAMPLE)
    assert body.decode().endswith("\n\ned \u00e8 subito sera.\n")
    assert body.count(b"\n") == 4
    [(name, kid, sig)] = signatures
    assert name == "quasimodo.example/salvatore"
    assert len(kid) == 4
    assert len(sig) == 64


def test_key_id_is_the_spec_hash() -> None:
    public = bytes(range(32))
    expected = hashlib.sha256(b"example.com/log\n\x01" + public).digest()[:4]
    assert key_id("example.com/log", public) == expected


# --- our own keys ---------------------------------------------------------------------


def _signer(name: str = "heimdall.test/site-a", seed: int = 1) -> NoteSigner:
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return NoteSigner(name, key)


SIGNER = _signer()
VERIFIER = SIGNER.verifier()
COSIGNER = _signer("heimdall.test/site-b", seed=2)
CHECKPOINT = Checkpoint("heimdall.test/site-a", 1234, leaf_hash(b"head"), extensions=("hlc 1700000000000.7",))
NOTE = SIGNER.sign(CHECKPOINT)


def test_sign_verify_round_trip_and_layout() -> None:
    assert VERIFIER.verify(NOTE) == CHECKPOINT
    assert VERIFIER.verify(NOTE, origin=CHECKPOINT.origin) == CHECKPOINT
    root_b64 = base64.b64encode(CHECKPOINT.root).decode()
    text, sig_line = NOTE.decode().split("\n\n")
    assert text == f"heimdall.test/site-a\n1234\n{root_b64}\nhlc 1700000000000.7"
    assert sig_line.startswith(f"{EM} heimdall.test/site-a ")
    assert sig_line.endswith("\n")
    assert base64.b64decode(sig_line.split(" ")[2])[:4] == SIGNER.key_id
    assert NoteVerifier.from_vkey(SIGNER.vkey()).verify(NOTE) == CHECKPOINT


def test_origin_mismatch_is_rejected() -> None:
    with pytest.raises(NoteError, match="origin"):
        VERIFIER.verify(NOTE, origin="heimdall.test/other-feed")


def test_wrong_keys_are_rejected() -> None:
    same_name_other_key = _signer(seed=3).verifier()
    other_name_same_key = NoteVerifier("heimdall.test/impostor", SIGNER.public_key)
    for verifier in (same_name_other_key, other_name_same_key, COSIGNER.verifier()):
        with pytest.raises(NoteError, match="no signature"):
            verifier.verify(NOTE)


def test_line_claiming_our_key_with_a_foreign_signature_is_rejected() -> None:
    # Another key signs, then the line is relabelled with our name and key id: a known
    # key whose signature fails rejects the whole note, even beside a good signature.
    forger = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
    raw = SIGNER.key_id + forger.sign(CHECKPOINT.body())
    forged_line = f"{EM} {SIGNER.name} {base64.b64encode(raw).decode()}\n".encode()
    body = CHECKPOINT.body()
    with pytest.raises(NoteError, match="bad signature"):
        VERIFIER.verify(body + b"\n" + forged_line)
    with pytest.raises(NoteError, match="bad signature"):
        VERIFIER.verify(NOTE + forged_line)


def _rejected(verifier: NoteVerifier, note: bytes) -> bool:
    try:
        verifier.verify(note)
    except IntegrityError:
        return True
    return False


def test_every_single_bit_flip_is_rejected() -> None:
    flips = 0
    for position in range(len(NOTE)):
        for bit in range(8):
            tampered = bytearray(NOTE)
            tampered[position] ^= 1 << bit
            assert _rejected(VERIFIER, bytes(tampered)), (position, bit)
            flips += 1
    assert flips == 8 * len(NOTE)


@SETTINGS
@given(st.data())
def test_any_flipped_byte_is_rejected(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(NOTE) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(NOTE)
    tampered[position] ^= mask
    assert _rejected(VERIFIER, bytes(tampered))


def test_cosignature_is_accepted_by_both_and_ignored_by_the_origin() -> None:
    cosigned = add_signature(NOTE, COSIGNER)
    assert cosigned.startswith(NOTE)
    assert VERIFIER.verify(cosigned) == CHECKPOINT
    assert COSIGNER.verifier().verify(cosigned) == CHECKPOINT
    body, signatures = split_note(cosigned)
    assert body == CHECKPOINT.body()
    assert [(s.name, s.key_id) for s in signatures] == [
        (SIGNER.name, SIGNER.key_id),
        (COSIGNER.name, COSIGNER.key_id),
    ]
    # A flip in the body breaks both; a flip in the cosignature only the cosigner's view.
    in_body = bytearray(cosigned)
    in_body[3] ^= 1
    assert _rejected(VERIFIER, bytes(in_body))
    assert _rejected(COSIGNER.verifier(), bytes(in_body))
    in_cosig = bytearray(cosigned)
    in_cosig[-10] ^= 0x01
    assert _rejected(COSIGNER.verifier(), bytes(in_cosig))
    with pytest.raises(EncodingError, match="already carries"):
        add_signature(cosigned, COSIGNER)


def test_malformed_cosignature_lines_reject_the_note() -> None:
    bad_lines = [
        b"-- heimdall.test/x AAAAAAAA\n",
        f"{EM} heimdall.test/x\n".encode(),
        f"{EM} heimdall.test/x AAAA\n".encode(),  # only a key id, no signature
        f"{EM} heimdall.test/x AAAAAA=\n".encode(),  # non-canonical base64
        f"{EM} heimdall.test/x AAAA AAAA\n".encode(),
        f"{EM} bad+name AAAAAAAA\n".encode(),
        f"{EM}  AAAAAAAA\n".encode(),
        f"{EM} heimdall.test/x AAAAAAAA".encode(),  # no final newline
    ]
    for line in bad_lines:
        with pytest.raises(NoteError):
            VERIFIER.verify(NOTE + line)


def _resign_body(body: bytes) -> bytes:
    return body + b"\n" + SIGNER.signature_line(body)


@pytest.mark.parametrize(
    "body",
    [
        b"heimdall.test/site-a\n01\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"heimdall.test/site-a\n+1\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"heimdall.test/site-a\n 1\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        "heimdall.test/site-a\n\uff11\n".encode() + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"heimdall.test/site-a\n1_0\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"heimdall.test/site-a\n9223372036854775808\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"heimdall.test/site-a\n1\n" + base64.b64encode(EMPTY_ROOT[:31]) + b"\n",
        b"heimdall.test/site-a\n1\n" + base64.b64encode(EMPTY_ROOT)[:-1] + b"\n",
        b"heimdall.test/site-a\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n",
        b"heimdall.test/site-a\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=\n",
        b"heimdall.test/site-a\n1\n",
        b"\n1\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"heimdall.test/site-a\n1\n" + base64.b64encode(EMPTY_ROOT) + b"\n\n",
        b"heimdall.test/site-a\n0\n" + base64.b64encode(leaf_hash(b"x")) + b"\n",
    ],
)
def test_malformed_checkpoint_bodies_are_rejected_even_when_signed(body: bytes) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse_body(body)
    with pytest.raises(NoteError):
        VERIFIER.verify(_resign_body(body))


def test_malformed_notes_are_rejected() -> None:
    body = CHECKPOINT.body()
    line = SIGNER.signature_line(body)
    malformed = [
        body + line,  # no blank line
        body + b"\n",  # no signatures
        body + b"\n" + line[:-1],  # no final newline
        body.replace(b"\n", b"\r\n") + b"\r\n" + line,
        body + b"\n" + line + b"\n",
        b"\x00" + body + b"\n" + line,
        body[:-1] + b"\xff\n\n" + line,  # invalid UTF-8
        b"",
    ]
    for note in malformed:
        with pytest.raises(NoteError):
            VERIFIER.verify(note)


def test_size_and_signature_count_are_bounded() -> None:
    filler = [
        f"{EM} heimdall.test/w{i} {base64.b64encode(bytes(68)).decode()}\n".encode()
        for i in range(NOTE_SIGNATURES_MAX)
    ]
    crowded = NOTE + b"".join(filler)
    assert len(crowded) <= NOTE_BYTES_MAX
    with pytest.raises(NoteError, match="signatures"):
        VERIFIER.verify(crowded)
    assert VERIFIER.verify(NOTE + b"".join(filler[:-1])) == CHECKPOINT
    with pytest.raises(EncodingError):
        add_signature(NOTE + b"".join(filler[:-1]), COSIGNER)
    long_ext = Checkpoint(CHECKPOINT.origin, 1, EMPTY_ROOT, ("x" * (NOTE_BYTES_MAX - 200),))
    huge = SIGNER.sign(long_ext)
    assert len(huge) <= NOTE_BYTES_MAX
    assert VERIFIER.verify(huge) == long_ext
    with pytest.raises(NoteError, match="more than"):
        VERIFIER.verify(huge + b"x" * (NOTE_BYTES_MAX - len(huge) + 1))
    with pytest.raises(EncodingError):
        SIGNER.sign(Checkpoint(CHECKPOINT.origin, 1, EMPTY_ROOT, ("x" * NOTE_BYTES_MAX,)))


def test_checkpoint_values_are_validated() -> None:
    root = leaf_hash(b"r")
    bad = [
        ("", 1, root, ()),
        ("a\nb", 1, root, ()),
        ("a\tb", 1, root, ()),
        ("o", -1, root, ()),
        ("o", 2**63, root, ()),
        ("o", True, root, ()),
        ("o", 1, root[:31], ()),
        ("o", 0, root, ()),
        ("o", 1, root, ("",)),
        ("o", 1, root, ("a\nb",)),
        ("\ud800", 1, root, ()),
    ]
    for origin, size, value, extensions in bad:
        with pytest.raises(NoteError):
            Checkpoint(origin, size, value, extensions)
    assert Checkpoint("o", 0, EMPTY_ROOT).size == 0


def test_signer_and_vkey_validation() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    for name in ("", "a b", "a+b", "a\u00a0b", "a\nb"):
        with pytest.raises(KeyMaterialError):
            NoteSigner(name, key)
    with pytest.raises(EncodingError):
        SIGNER.sign_text(b"no final newline")
    with pytest.raises(EncodingError):
        SIGNER.sign_text(b"control \x07 character\n")
    with pytest.raises(KeyMaterialError):
        NoteVerifier("name", b"short")
    name, kid, encoded = GO_VKEY.split("+", 2)
    bad_vkeys = [
        f"{name}+{kid.upper()}+{encoded}",
        f"{name}+{kid[:-1]}0+{encoded}",
        f"{name}+{kid}+{encoded[:-1]}",
        f"{name}+{kid}+B{encoded[1:]}",  # signature type byte is 0x05, not 0x01
        f"{name}+{kid}",
        f"Other+{kid}+{encoded}",
        f"+{kid}+{encoded}",
    ]
    for vkey in bad_vkeys:
        with pytest.raises(KeyMaterialError):
            NoteVerifier.from_vkey(vkey)


# --- properties -----------------------------------------------------------------------

_line_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@st.composite
def _checkpoints(draw: st.DrawFn) -> Checkpoint:
    size = draw(st.integers(0, 2**63 - 1))
    root = EMPTY_ROOT if size == 0 else draw(st.binary(min_size=32, max_size=32))
    extensions = tuple(draw(st.lists(_line_text, max_size=3)))
    return Checkpoint(draw(_line_text), size, root, extensions)


@SETTINGS
@given(_checkpoints())
def test_checkpoint_body_round_trip(checkpoint: Checkpoint) -> None:
    assert Checkpoint.parse_body(checkpoint.body()) == checkpoint
    assert VERIFIER.verify(SIGNER.sign(checkpoint)) == checkpoint


@st.composite
def _mutated_bodies(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(_checkpoints()).body())
    position = draw(st.integers(0, len(body) - 1))
    body[position] = draw(st.integers(0, 255))
    return bytes(body)


@SETTINGS
@given(st.one_of(st.binary(max_size=120), _mutated_bodies()))
def test_parse_body_accepts_only_canonical_bytes(data: bytes) -> None:
    try:
        checkpoint = Checkpoint.parse_body(data)
    except NoteError:
        return
    assert checkpoint.body() == data


@SETTINGS
@given(st.binary(max_size=200))
def test_split_note_never_raises_anything_but_note_error(data: bytes) -> None:
    try:
        body, signatures = split_note(data)
    except NoteError:
        return
    assert body.endswith(b"\n")
    assert signatures
