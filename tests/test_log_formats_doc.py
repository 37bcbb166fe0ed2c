"""docs/formats.md's worked example is real: rebuild it and find every line in the document."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from logutil import FakeClock

from heimdall_core.events import encode_body
from heimdall_core.keys import SigningKey
from heimdall_core.log.checkpoint import NoteSigner
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.verify import origin_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"
# The example's key: a fixed seed anyone can recompute. Never use it for anything real.
EXAMPLE_SEED = hashlib.sha256(b"heimdall docs/formats.md example key").digest()
EXAMPLE_TIME_MS = 1_700_000_000_000
EXAMPLE_PAYLOAD = {"msg": "hello"}


def hexdump(data: bytes, base: int = 0) -> list[str]:
    """`xxd`-like lines: file offset, 16 bytes in hex."""
    return [f"{base + offset:08x}: " + " ".join(f"{b:02x}" for b in data[offset:offset + 16])
            for offset in range(0, len(data), 16)]


def head_slot_1(head: bytes) -> bytes:
    """The used part of slot 1 (generation 1 lives in slot 1 % 2), from file offset 8192."""
    assert not head[:8192].strip(b"\0")
    return head[8192:].rstrip(b"\0")


def build_example(directory: Path) -> dict[str, object]:
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(EXAMPLE_SEED))
    feed = key.public
    log = FeedLog.open_for_writing(directory / "feed", feed, options=LogOptions(fsync=False),
                                   key=key, clock=FakeClock(EXAMPLE_TIME_MS))
    log.append_bodies([encode_body("note", 1, EXAMPLE_PAYLOAD)])
    (size, note), = log.checkpoints()
    log.close()
    files = directory / "feed"
    return {
        "feed": feed.hex(),
        "vkey": NoteSigner(origin_for(feed), key.private).vkey(),
        "segment": (files / "seg-00000000000000000000.log").read_bytes(),
        "index": (files / "index").read_bytes(),
        "checkpoints": (files / "checkpoints.idx").read_bytes(),
        "head": (files / "head").read_bytes(),
        "note": note.decode(),
        "size": size,
    }


def test_worked_example_matches_the_document(tmp_path: Path) -> None:
    example = build_example(tmp_path)
    doc = DOC.read_text()
    assert str(example["feed"]) in doc
    assert str(example["vkey"]) in doc
    for name in ("segment", "index", "checkpoints"):
        data = example[name]
        assert isinstance(data, bytes)
        for line in hexdump(data):
            assert line in doc, (name, line)
    head = example["head"]
    assert isinstance(head, bytes) and len(head) == 2 * 8192
    for line in hexdump(head_slot_1(head), 8192):
        assert line in doc, ("head", line)
    for line in str(example["note"]).splitlines():
        assert line in doc, ("note", line)


if __name__ == "__main__":  # print the example for the document
    import tempfile

    example = build_example(Path(tempfile.mkdtemp()))
    for name, value in example.items():
        print(f"== {name}")
        if isinstance(value, bytes):
            print("\n".join(hexdump(head_slot_1(value), 8192) if name == "head" else hexdump(value)))
        else:
            print(value)
