"""The byte edge of ingest: recognise compression, decompress by push, sniff the format.

Everything here except :func:`iter_file_chunks` is push-based and does no I/O: the CLI
reads a file in chunks, the HTTP API receives a body in chunks, and both push the same
bytes into the same objects (h11-style). The chain is::

    raw chunks -> AutoDecompressor.feed() -> text bytes -> parser.feed() -> records

Decompression bombs are stopped by named limits checked after every piece of output
(at most ``OUTPUT_PIECE_BYTES``), so a bomb is refused before it can fill memory:

* ``COMPRESSION_RATIO_MAX``: total output may not exceed this many times the total
  input (after a grace of ``RATIO_GRACE_BYTES``). Real dumps compress 3-20x, very
  repetitive logs up to a few hundred; gzip cannot exceed ~1032x at all.
* the same ratio per ``feed`` call (with the same grace), so a bomb hidden behind a
  long legitimate prefix cannot use the budget the prefix earned to blow up one call.
  It also bounds the memory of one call: ``ratio_max * len(chunk) + grace``; feed
  chunks of 64 KiB-1 MiB.
* ``DECOMPRESSED_BYTES_MAX``: total output, whatever the ratio.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, Protocol

import orjson
import zstandard

from heimdall_core.errors import IngestError, UnsupportedInput
from heimdall_core.ingest.mapping import kind_from_name

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB

HEAD_BYTES: Final = 64 * KIB
"""How much of the (decompressed) input to look at to sniff format, delimiter, header."""

FILE_CHUNK_BYTES: Final = 256 * KIB
"""Default read size of :func:`iter_file_chunks`: big enough to amortise per-call costs."""

COMPRESSION_RATIO_MAX: Final = 1000
RATIO_GRACE_BYTES: Final = 64 * MIB
"""Output allowed before the ratio applies: a bz2 block alone may expand to ~46 MB."""

DECOMPRESSED_BYTES_MAX: Final = 256 * GIB
OUTPUT_PIECE_BYTES: Final = 1 * MIB
"""Granularity of the bomb checks: decompressors produce at most this much at a time."""

DECODER_WINDOW_BYTES_MAX: Final = 128 * MIB
"""Memory an xz or zstd decoder may take for its window (xz -9 needs 65 MiB); a hostile
header cannot make it allocate more."""

ZSTD_EXPANSION_PER_BYTE_MAX: Final = 32 * KIB
"""Worst zstd expansion: a 4-byte RLE block decodes to a 128 KiB block."""
ZSTD_SLICE_BYTES_MIN: Final = 512
ZSTD_SLICE_BYTES_MAX: Final = 1 * MIB

COMPRESSIONS: Final = ("gzip", "bz2", "xz", "zstd")
FORMATS: Final = ("csv", "json", "ndjson", "combo")

UTF8_BOM: Final = b"\xef\xbb\xbf"
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")

_MAGIC: Final = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_BZ2_STREAM_HEADS: Final = (b"1AY&SY", b"\x17rE8P\x90")  # first block, or empty stream
_MAGIC_BYTES_MAX: Final = 10
"""Bytes needed to recognise every magic above (bz2: "BZh" + level + block magic)."""
_MAGIC_LEN: Final = {"gzip": 2, "xz": 6, "zstd": 4, "bz2": 10}


def detect_compression(head: bytes) -> str | None:
    """Name the compression of a stream from its first bytes, or None for plain data.

    ``head`` should hold at least ``_MAGIC_BYTES_MAX`` (10) bytes when the stream is that
    long; a shorter head is judged on what it has.
    """
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if _is_bz2_head(head):
        return "bz2"
    return None


def _is_bz2_head(head: bytes) -> bool:
    # "BZh" alone is also the start of plain text ("BZh..."); the level digit and the
    # 48-bit block magic make it unambiguous.
    if len(head) < 4 or not head.startswith(b"BZh") or head[3] not in b"123456789":
        return False
    rest = head[4:10]
    return any(magic.startswith(rest) for magic in _BZ2_STREAM_HEADS)


# --- decompression -----------------------------------------------------------------------


class _Member(Protocol):
    """One gzip member / bz2 stream / xz stream / zstd frame being decoded."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def pump(self, data: bytes, budget_bytes: int) -> Iterator[bytes]:
        """Decode all of ``data`` (or up to the member's end), in pieces."""
        ...


class _ZlibMember:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def pump(self, data: bytes, budget_bytes: int) -> Iterator[bytes]:
        while True:
            out = self._d.decompress(data, OUTPUT_PIECE_BYTES)
            if out:
                yield out
            data = self._d.unconsumed_tail
            # A full piece may leave output inside zlib even with no input left.
            if self._d.eof or (not data and len(out) < OUTPUT_PIECE_BYTES):
                return


class _BufferedMember:
    """bz2 and xz: both keep unconsumed input inside and report ``needs_input``."""

    def __init__(self, d: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self._d = d

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def pump(self, data: bytes, budget_bytes: int) -> Iterator[bytes]:
        out = self._d.decompress(data, OUTPUT_PIECE_BYTES)
        while True:
            if out:
                yield out
            if self._d.eof or self._d.needs_input:
                return
            out = self._d.decompress(b"", OUTPUT_PIECE_BYTES)


class _ZstdMember:
    """zstd has no output bound per call, so the input is sliced instead.

    A slice never holds more input than could expand to the remaining budget, hence a
    bomb overshoots its budget by at most one minimum slice (512 B -> 16 MiB).
    """

    def __init__(self) -> None:
        decoder = zstandard.ZstdDecompressor(max_window_size=DECODER_WINDOW_BYTES_MAX)
        self._d = decoder.decompressobj()
        self._tail = b""

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._d.unused_data) + self._tail

    def pump(self, data: bytes, budget_bytes: int) -> Iterator[bytes]:
        pos = 0
        while pos < len(data):
            size = budget_bytes // ZSTD_EXPANSION_PER_BYTE_MAX
            size = max(ZSTD_SLICE_BYTES_MIN, min(size, ZSTD_SLICE_BYTES_MAX))
            out = self._d.decompress(data[pos : pos + size])
            pos += size
            if out:
                budget_bytes -= len(out)
                yield out
            if self._d.eof:
                self._tail = data[pos:]
                return


def _new_member(kind: str) -> _Member:
    if kind == "gzip":
        return _ZlibMember()
    if kind == "bz2":
        return _BufferedMember(bz2.BZ2Decompressor())
    if kind == "xz":
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=DECODER_WINDOW_BYTES_MAX)
        return _BufferedMember(decoder)
    if kind == "zstd":
        return _ZstdMember()
    raise IngestError(f"unknown compression {kind!r}; expected one of {', '.join(COMPRESSIONS)}")


_CODEC_ERRORS: Final = (zlib.error, OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)


class Decompressor:
    """Push-based decompressor for gzip (multi-member), bz2 (multi-stream), xz, zstd.

    ``feed(chunk)`` returns the bytes the chunk decodes to; ``close()`` checks the stream
    ended cleanly. Concatenated members are decoded one after the other (``cat a.gz
    b.gz``, pbzip2, multi-frame zstd); NUL padding after a member is ignored (tar-style
    block padding, xz stream padding). Raises :class:`IngestError` for corrupt or
    truncated data and for decompression bombs (see the module limits); after an error
    the object is unusable.
    """

    def __init__(
        self,
        kind: str,
        *,
        ratio_max: int = COMPRESSION_RATIO_MAX,
        output_bytes_max: int = DECOMPRESSED_BYTES_MAX,
        ratio_grace_bytes: int = RATIO_GRACE_BYTES,
    ) -> None:
        self.kind = kind
        self._member: _Member | None = _new_member(kind)
        self._member_started = False
        self._between = b""  # bytes after a member, too few to recognise the next one
        self._ratio_max = ratio_max
        self._output_bytes_max = output_bytes_max
        self._grace = ratio_grace_bytes
        self._in_total = 0
        self._out_total = 0
        self._call_budget = 0
        self._failed = False
        self._closed = False

    @property
    def bytes_in(self) -> int:
        return self._in_total

    @property
    def bytes_out(self) -> int:
        return self._out_total

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self.feed_pieces(chunk))

    def feed_pieces(self, chunk: bytes) -> Iterator[bytes]:
        """Like ``feed`` but yields the output piece by piece, so a caller that consumes each
        piece before asking for the next holds one piece, not a whole bomb's worth."""
        self._check_usable()
        self._in_total += len(chunk)
        self._call_budget = self._ratio_max * len(chunk) + self._grace
        try:
            yield from self._decode(chunk)
        except BaseException:
            self._failed = True
            raise

    def close(self) -> bytes:
        """End of input: raises if the last member is incomplete."""
        self._check_usable()
        self._closed = True
        if self._member is not None and self._member_started and not self._member.eof:
            raise IngestError(
                f"{self.kind} input is truncated: it ends inside compressed data "
                f"after {self._in_total} bytes (incomplete download or copy?)"
            )
        if self._between:
            raise self._trailing_garbage()
        return b""

    def _check_usable(self) -> None:
        if self._failed:
            raise IngestError(f"{self.kind} decompression already failed; start over")
        if self._closed:
            raise IngestError(f"{self.kind} decompressor is closed")

    def _decode(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._member is None:
                data = self._after_member(data)
                continue
            member = self._member
            self._member_started = True
            try:
                for piece in member.pump(data, self._budget_bytes()):
                    self._account(len(piece))
                    yield piece
            except _CODEC_ERRORS as e:
                raise IngestError(
                    f"{self.kind} data is corrupt near compressed byte {self._in_total}: {e}"
                ) from e
            if not member.eof:
                return
            data = member.unused_data
            self._member = None

    def _after_member(self, data: bytes) -> bytes:
        """Between members: NUL padding, the next member, or garbage."""
        head = (self._between + data).lstrip(b"\x00")
        self._between = b""
        if len(head) < _MAGIC_LEN[self.kind]:
            self._between = head  # wait: the next magic may be split across chunks
            return b""
        if detect_compression(head[:_MAGIC_BYTES_MAX]) != self.kind:
            raise self._trailing_garbage()
        self._member = _new_member(self.kind)
        self._member_started = False
        return head

    def _trailing_garbage(self) -> IngestError:
        return IngestError(
            f"{self.kind} input has trailing data that is not {self.kind} "
            f"(around compressed byte {self._in_total}); the file may be damaged"
        )

    def _budget_bytes(self) -> int:
        total = self._ratio_max * self._in_total + self._grace - self._out_total
        return max(0, min(total, self._call_budget, self._output_bytes_max - self._out_total))

    def _account(self, produced: int) -> None:
        self._out_total += produced
        self._call_budget -= produced
        if self._out_total > self._output_bytes_max:
            raise IngestError(
                f"{self.kind} input decompresses to more than {self._output_bytes_max} bytes "
                f"(DECOMPRESSED_BYTES_MAX); refusing it"
            )
        ratio_budget = self._ratio_max * self._in_total + self._grace
        if self._out_total > ratio_budget or self._call_budget < 0:
            raise IngestError(
                f"{self.kind} input expands more than {self._ratio_max}x "
                f"(COMPRESSION_RATIO_MAX): probably a decompression bomb; refusing it"
            )


class AutoDecompressor:
    """Recognises the compression from the first bytes, then behaves as a Decompressor.

    Plain (uncompressed) input passes through unchanged. ``compression`` is None until
    enough bytes were seen to decide, then the kind or "none".
    """

    def __init__(
        self,
        *,
        ratio_max: int = COMPRESSION_RATIO_MAX,
        output_bytes_max: int = DECOMPRESSED_BYTES_MAX,
        ratio_grace_bytes: int = RATIO_GRACE_BYTES,
    ) -> None:
        self._head = b""
        self._inner: Decompressor | None = None
        self._plain = False
        self._limits = {
            "ratio_max": ratio_max,
            "output_bytes_max": output_bytes_max,
            "ratio_grace_bytes": ratio_grace_bytes,
        }

    @property
    def compression(self) -> str | None:
        if self._plain:
            return "none"
        return None if self._inner is None else self._inner.kind

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self.feed_pieces(chunk))

    def feed_pieces(self, chunk: bytes) -> Iterator[bytes]:
        """The output of ``chunk`` piece by piece (bounded memory for compressed input)."""
        if self._plain:
            yield chunk
            return
        if self._inner is not None:
            yield from self._inner.feed_pieces(chunk)
            return
        self._head += chunk
        if len(self._head) < _MAGIC_BYTES_MAX:
            return
        head, self._head = self._head, b""
        kind = detect_compression(head)
        if kind is None:
            self._plain = True
            yield head
            return
        self._inner = Decompressor(kind, **self._limits)
        yield from self._inner.feed_pieces(head)

    def close(self) -> bytes:
        out = b""
        if self._inner is None and not self._plain:
            out = self._decide()
        if self._inner is not None:
            out += self._inner.close()
        return out

    def _decide(self) -> bytes:
        head, self._head = self._head, b""
        kind = detect_compression(head)
        if kind is None:
            self._plain = True
            return head
        self._inner = Decompressor(kind, **self._limits)
        return self._inner.feed(head)


# --- format detection --------------------------------------------------------------------

_NOT_CONTROL_BYTES: Final = bytes(b for b in range(256) if b >= 32 or b in (9, 10, 12, 13))
_CONTROL_FRACTION_MAX: Final = 0.01
_INVALID_UTF8_FRACTION_MAX: Final = 0.10
_SNIFF_LINES_MAX: Final = 200


def detect_format(head: bytes) -> str:
    """Guess the format of decompressed input from its first bytes (ideally 64 KiB).

    Returns one of ``FORMATS``. Raises :class:`IngestError` for empty input, compressed
    input (decompress first), UTF-16 and binary data. A UTF-8 BOM is skipped.
    """
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :]
    reject_non_text(head)
    stripped = head.lstrip(b" \t\r\n\f")
    if not stripped:
        raise IngestError("input is empty: nothing to ingest")
    first = stripped[:1]
    if first == b"[":
        return "ndjson" if _is_row_per_line(stripped) else "json"
    if first == b"{":
        return _json_or_ndjson(stripped)
    return "combo" if _looks_like_combo(stripped) else "csv"


_FAMILY: Final = {"csv": "text", "tsv": "text", "combo": "text", "json": "JSON", "ndjson": "JSON"}


def sniff_format(head: bytes, *, forced: str | None = None, hint: str | None = None) -> str:
    """The format to parse the input as, from its first bytes (ideally 64 KiB).

    The input must be text whatever the format (:func:`reject_non_text`). ``forced`` (an
    operator's ``--format``) is then taken as it is. ``hint`` (an HTTP Content-Type) is
    only a claim: the input is still sniffed, and a hint of the other family (text
    table vs JSON) is refused with :class:`UnsupportedInput`. Within a family the hint
    decides between CSV and combo (the sender knows its columns), the content between
    JSON and NDJSON (the JSON parser reads NDJSON too, not the other way round).
    """
    if forced is not None:
        reject_non_text(head)
        return forced
    detected = detect_format(head)
    if hint is None or hint not in _FAMILY:
        return detected
    if _FAMILY[hint] != _FAMILY[detected]:
        raise UnsupportedInput(
            f"the declared format {hint} does not match the input, which looks like "
            f"{_FAMILY[detected]} ({detected}): fix the Content-Type or give the format"
        )
    return hint if _FAMILY[hint] == "text" else detected


def reject_non_text(head: bytes) -> None:
    """Raise :class:`UnsupportedInput` unless ``head`` looks like UTF-8 text: compressed,
    UTF-16, NUL bytes, over 1% control bytes or 10% invalid UTF-8 are refused."""
    kind = detect_compression(head[:_MAGIC_BYTES_MAX])
    if kind is not None:
        raise UnsupportedInput(f"input is {kind}-compressed; decompress it before sniffing")
    if head.startswith(_UTF16_BOMS):
        raise UnsupportedInput(
            "input is UTF-16 text; convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8)"
        )
    if b"\x00" in head:
        raise UnsupportedInput(
            "input is binary (it contains NUL bytes), not CSV, JSON or text lines"
        )
    sample = head[:HEAD_BYTES]
    controls = len(sample.translate(None, _NOT_CONTROL_BYTES))
    if controls > len(sample) * _CONTROL_FRACTION_MAX:
        raise UnsupportedInput("input is binary (too many control bytes), not a text format")
    invalid = len(sample) - len(sample.decode("utf-8", "ignore").encode("utf-8"))
    if invalid > len(sample) * _INVALID_UTF8_FRACTION_MAX:
        raise UnsupportedInput("input is binary or not UTF-8 (too many invalid UTF-8 bytes)")


def _json_or_ndjson(text: bytes) -> str:
    """A first line that is a whole JSON object means NDJSON, unless it is a wrapper."""
    first, newline, rest = text.partition(b"\n")
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError:
        return "json"  # an object spread over several lines
    if not newline or not rest.strip():
        return "json" if _is_wrapper(value) else "ndjson"
    return "ndjson"


def _is_row_per_line(text: bytes) -> bool:
    """A first line that is a whole array of scalars, with more lines after it: rows one
    per line (NDJSON of arrays), not one array of scalar records followed by others."""
    first, _, rest = text.partition(b"\n")
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return bool(rest.strip()) and isinstance(value, list) and not any(
        isinstance(element, list | dict) for element in value)


def _is_wrapper(value: object) -> bool:
    return isinstance(value, dict) and any(
        isinstance(v, list) and v and isinstance(v[0], dict) for v in value.values()
    )


def _looks_like_combo(text: bytes) -> bool:
    lines = text.decode("utf-8", "replace").splitlines()[:_SNIFF_LINES_MAX]
    return looks_like_combo(lines)


_COMBO_LINE: Final = re.compile(r"[^\s:;|,\"']{1,256}([:;|])")
_NOT_COMBO_LINE: Final = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://"  # URLs
    r"|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"  # IPv6 addresses
    r"|\d{1,2}:\d{2}\b"  # times of day (log lines)
)
_COMBO_LINES_FRACTION_MIN: Final = 0.8


def looks_like_combo(lines: Sequence[str]) -> bool:
    """Lines of ``login<:;|>secret``, as opposed to delimited columns (CSV).

    Most lines must start with a login free of spaces, quotes and commas followed by one
    of ``: ; |``; a header of known column names, or the same number (3 or more) of
    delimiters on every line, means CSV instead.
    """
    lines = [line for line in lines if line.strip()]
    if not lines:
        return False
    delimiters = [_combo_delimiter(line) for line in lines]
    found = [d for d in delimiters if d is not None]
    if len(found) < len(lines) * _COMBO_LINES_FRACTION_MIN:
        return False
    delimiter = max(set(found), key=found.count)
    counts = {line.count(delimiter) for line in lines}
    if len(counts) == 1 and min(counts) >= 2:
        return False  # a consistent table of 3+ columns
    return not all(kind_from_name(name) for name in lines[0].split(delimiter))


def _combo_delimiter(line: str) -> str | None:
    if _NOT_COMBO_LINE.match(line):
        return None
    m = _COMBO_LINE.match(line)
    return m.group(1) if m else None


# --- file edge ---------------------------------------------------------------------------


def iter_file_chunks(
    path: str | Path, chunk_bytes: int = FILE_CHUNK_BYTES
) -> Iterator[bytes]:
    """Read a file in chunks (the only I/O in the ingest readers; for the CLI)."""
    if chunk_bytes <= 0:
        raise IngestError(f"chunk size must be positive, got {chunk_bytes}")
    with open(path, "rb") as f:
        read: Callable[[int], bytes] = f.read
        while chunk := read(chunk_bytes):
            yield chunk
