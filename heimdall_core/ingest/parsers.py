"""Streaming push parsers: bytes in, raw records out (CSV/TSV, JSON, NDJSON, combo lists).

No I/O here (h11-style): callers push chunks with ``feed(data)`` and get back the records
completed so far, then call ``close()`` once at the end. Chunk boundaries may fall
anywhere (inside a quoted field, a CRLF, a UTF-8 character, a JSON string escape): the
records are the same for every split of the same input.

One malformed record never aborts a file: it becomes a :class:`BadRecord` whose reason is
PII-safe (it never quotes input) and parsing goes on. Only input that cannot be read at
all raises :class:`IngestError` (e.g. JSON that is not an array or object, or 1000 bad
records in a row before any good one: the format is wrong); ``malformed_input()`` after
``close()`` says the same of input with bad records and no good one at all.

Memory is bounded: one record may span at most ``line_bytes_max`` bytes (JSON: per
record); a longer one is reported and skipped without being buffered whole.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

import orjson

from heimdall_core.errors import IngestError
from heimdall_core.ingest.mapping import is_known_name, sniff_value
from heimdall_core.ingest.sources import HEAD_BYTES, UTF8_BOM

LINE_BYTES_MAX: Final = 1024 * 1024
"""Default bound on one record: a CSV record or text line, or one JSON record."""
SNIFF_BYTES: Final = HEAD_BYTES
"""CSV delimiter and header are decided on exactly this much input (same for any split)."""
FIELDS_PER_RECORD_MAX: Final = 10_000
JSON_DEPTH_MAX: Final = 64
"""Deeper nesting is refused per record (and keeps the flattening recursion shallow)."""
COLUMNS_TRACKED_MAX: Final = 4096
"""``parser.columns`` of a JSON parser stops growing here (hostile keys cannot bloat it)."""
INTERNED_COLUMN_SETS_MAX: Final = 1024
LEADING_BAD_RECORDS_MAX: Final = 1000
"""This many bad records before any good one means the format is wrong: stop."""

CSV_DELIMITERS: Final = (",", "\t", ";", "|", ":")
COMBO_DELIMITERS: Final = (":", ";", "|", "\t")
COMBO_COLUMNS: Final = ("login", "secret")
JSON_SCALAR_COLUMN: Final = "value"
"""Column name for a JSON record that is not an object (a bare string, number or list)."""


class RawRecord(NamedTuple):
    """One parsed record: parallel tuples of column names and values (all text).

    A named tuple rather than a frozen dataclass (immutable all the same): one is built
    per record, and a named tuple is built about three times faster.

    ``position`` is 1-based: the line where the record starts for CSV, NDJSON and combo
    lists; the record's index in the document for JSON (a pretty-printed record spans
    many lines, a minified document has only one).

    A column may occur more than once (a JSON array of scalars gives one value per
    element under the same name). Records of one parser share their ``columns`` tuple
    object when the columns are the same, so this costs one pointer per record.
    """

    position: int
    columns: tuple[str, ...]
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not be parsed. ``reason`` never contains input data."""

    position: int
    reason: str


Item = RawRecord | BadRecord


class Parser(Protocol):
    """What every format parser offers (see the module docstring)."""

    @property
    def format(self) -> str: ...

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names known so far (CSV: once the header is seen; JSON: the union)."""
        ...

    def feed(self, data: bytes) -> list[Item]: ...

    def close(self) -> list[Item]: ...

    def malformed_input(self) -> IngestError | None:
        """After ``close``: why the input as a whole is unusable (bad records and not one
        good one: probably the wrong format or encoding), or None."""
        ...

    def cut(self) -> list[Item]:
        """Instead of ``close``, for input cut off at any byte (an aborted upload): the
        whole records still held back, never the partial one the cut fell in."""
        ...


# --- shared pieces -----------------------------------------------------------------------


class _BomSkipper:
    """Drops a UTF-8 BOM at the very start, even when it arrives split over chunks."""

    __slots__ = ("_done", "_head")

    def __init__(self) -> None:
        self._head = b""
        self._done = False

    def strip(self, data: bytes) -> bytes:
        if self._done:
            return data
        head = self._head + data
        if len(head) < len(UTF8_BOM) and UTF8_BOM.startswith(head):
            self._head = head
            return b""
        self._done = True
        self._head = b""
        return head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head

    def flush(self) -> bytes:
        """At the end: bytes held back because they could have been a BOM."""
        self._done = True
        head, self._head = self._head, b""
        return head


class _LeadGuard:
    """Stops a file whose first records are all bad: the format (or encoding) is wrong.

    Checked as records come (``LEADING_BAD_RECORDS_MAX`` bad ones before any good one)
    and, by the caller, at the end (``verdict``: bad records and not one good one), so
    that a short file in the wrong format fails with a hint instead of ingesting
    nothing. A planned part of a file is one stretch of it, and a bad stretch alone does
    not make the whole file wrong (one process reading the file ingests the good records
    around it): the end check is left out for every part (``whole_input`` false), the
    first one included, and both checks for a part after the first (``from_start``
    false), whose first records are not the file's.
    """

    __slots__ = ("_bad", "_first", "_format", "_settled", "_whole_input")

    def __init__(self, fmt: str, *, from_start: bool = True, whole_input: bool = True) -> None:
        self._format = fmt
        self._whole_input = whole_input
        self._bad = 0
        self._first: BadRecord | None = None
        self._settled = not from_start  # settled: no more checks

    def check(self, items: list[Item]) -> list[Item]:
        if self._settled:
            return items
        for item in items:
            if type(item) is RawRecord:
                self._settled = True
                return items
            assert isinstance(item, BadRecord)
            self._first = self._first or item
            self._bad += 1
            if self._bad >= LEADING_BAD_RECORDS_MAX:
                raise self._error(f"the first {self._bad} records are all malformed")
        return items

    def verdict(self) -> IngestError | None:
        """Once every item was checked: the error for input with bad records and not one
        good one (None otherwise)."""
        if self._whole_input and not self._settled and self._bad:
            return self._error(f"all {self._bad} records are malformed")
        return None

    def _error(self, what: str) -> IngestError:
        first = self._first
        assert first is not None
        where = f"(first at position {first.position}: {first.reason})"
        hint = f"the input is probably not {self._format}: check the format and delimiter"
        if first.reason.startswith(_INVALID_UTF8):
            hint = (f"the input is probably not {self._format} or not UTF-8: convert it "
                    "first (iconv -f LATIN1 -t UTF-8)")
        return IngestError(f"{what} {where}; {hint}")


NEWLINE: Final = b"\n"


def _too_long(limit: int, what: str = "record") -> str:
    return f"{what} longer than {limit} bytes"


_INVALID_UTF8: Final = "invalid UTF-8"


def _utf8_reason(raw: bytes, error: UnicodeDecodeError) -> str:
    """Where the bad byte is: within the line, or which line of a multi-line record."""
    line_start = raw.rfind(b"\n", 0, error.start) + 1
    where = "the line"
    if line_start:
        where = f"line {raw.count(NEWLINE, 0, line_start) + 1} of the record"
    return f"{_INVALID_UTF8} at byte {error.start - line_start + 1} of {where}"


class _LineFramer:
    """Cuts a byte stream into blocks of whole lines, each line at most ``limit`` bytes.

    ``push`` returns, in order, ``(first_line_number, block)`` pairs (lines joined by
    ``\\n``, without the final one) and BadRecords for over-long lines, which are skipped
    up to the next newline without being buffered.
    """

    def __init__(self, limit: int, first_line: int = 1) -> None:
        self._limit = limit
        self._bom = _BomSkipper()
        self._buf = bytearray()
        self._line = first_line  # number of the line starting at _buf[0]
        self._skipping = False

    def push(self, data: bytes) -> list[tuple[int, bytes] | BadRecord]:
        return self._frame(self._bom.strip(data), final=False)

    def finish(self) -> list[tuple[int, bytes] | BadRecord]:
        return self._frame(self._bom.flush(), final=True)

    def _frame(self, data: bytes, *, final: bool) -> list[tuple[int, bytes] | BadRecord]:
        out: list[tuple[int, bytes] | BadRecord] = []
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return out
            data = data[newline + 1 :]
            self._line += 1
            self._skipping = False
        buf = self._buf
        buf += data
        if final and buf and not buf.endswith(b"\n"):
            buf += b"\n"
        pos, size, limit = 0, len(buf), self._limit
        while pos < size:
            end = buf.rfind(b"\n", pos, pos + limit + 1) + 1
            if end > pos:
                out.append((self._line, bytes(buf[pos : end - 1])))
                self._line += buf.count(b"\n", pos, end)
                pos = end
                continue
            if size - pos <= limit:
                break  # an incomplete line: wait for more
            out.append(BadRecord(self._line, _too_long(limit, "line")))
            newline = buf.find(b"\n", pos)
            if newline < 0:
                self._skipping = True
                pos = size
                break
            pos = newline + 1
            self._line += 1
        del buf[:pos]
        return out


# --- CSV ---------------------------------------------------------------------------------

_STRAY_CR: Final = re.compile(r"\r(?!\n)")
_UNKNOWN: Final = -1  # field count before any row was seen; matches no row
_HEADER_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_ .\-/#()]{0,63}")
_VALUE_KINDS_NOT_NAMES: Final = frozenset(
    {"email", "ip", "cidr", "url", "hash", "password_hash", "phone"}
)


def _csv_record_patterns(delimiter: str) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Regexes for one / many whole CSV records, as the C csv module (excel dialect,
    strict=False) splits them: a quote opens a quoted field only at the start of a field,
    ``""`` inside is a literal quote, text after the closing quote belongs to the field.
    Possessive, so a record only matches once its final newline is in the buffer.
    """
    d = re.escape(delimiter.encode())
    unquoted_rest = rb"[^" + d + rb"\n]*+"
    field = (
        rb'(?:"(?:[^"]++|"")*+"' + unquoted_rest + rb'|[^"' + d + rb"\n]" + unquoted_rest + rb")?+"
    )
    record = field + rb"(?:" + d + field + rb")*+\n"
    return re.compile(record), re.compile(rb"(?:" + record + rb")*+")


def _raise_csv_field_limit(limit: int) -> None:
    # The csv module refuses fields over 128 KiB by default (a process-wide setting). Our
    # own record bound is the real limit; raising the csv one only ever allows more.
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


@dataclass(frozen=True, slots=True)
class _SampleRow:
    first_line: int
    last_line: int
    fields: list[str]


def _sample_rows(text: str, delimiter: str) -> list[_SampleRow]:
    reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=delimiter)
    rows: list[_SampleRow] = []
    prev = 0
    try:
        for fields in reader:
            if fields:
                rows.append(_SampleRow(prev + 1, reader.line_num, fields))
            prev = reader.line_num
    except csv.Error:
        pass  # a malformed line ends the sample; it is judged again when parsed
    return rows


def sniff_delimiter(text: str) -> str:
    """The delimiter among ``CSV_DELIMITERS`` that splits the most sample rows into the
    same number (2 or more) of fields; ties go to the earlier in the list; "," if none."""
    best, best_score = ",", 0.0
    for delimiter in CSV_DELIMITERS:
        counts = Counter(len(r.fields) for r in _sample_rows(text, delimiter))
        if not counts:
            continue
        mode, freq = counts.most_common(1)[0]
        score = freq / counts.total()
        if mode >= 2 and score > best_score:
            best, best_score = delimiter, score
    return best


def _looks_like_name(value: str) -> bool:
    name = value.strip()
    return bool(_HEADER_NAME.fullmatch(name)) and sniff_value(name) not in _VALUE_KINDS_NOT_NAMES


def looks_like_header(first: Sequence[str], declared: Collection[str] = ()) -> bool:
    """First row all non-empty distinct names (none an email, IP, hash, URL, phone) and at
    least one a column name of the vocabulary word for word (``is_known_name``: ``email``,
    ``user_name``, ``created_at``; not ``john_email``, which only contains one) or one the
    operator ``declared`` (``--map``). Nothing weaker: a headerless file's first row taken
    for a header would make its values (usernames, passwords) column names, and lose the
    row as data.

    Empty names at the end of the row are allowed: a spreadsheet saved as CSV writes a
    delimiter after the last name (``email,ip,``) for a column that was ever touched;
    those columns are named by their place (``col3``)."""
    named = list(first)
    while named and not named[-1].strip():
        named.pop()
    names = [f.strip().lower() for f in named]
    if not names or not all(names) or len(set(names)) != len(names):
        return False
    if not all(_looks_like_name(f) for f in named):
        return False
    return any(is_known_name(f.strip()) or f.strip() in declared for f in named)


class CsvParser:
    """Delimited text (CSV, TSV, ``;``/``|``/``:``-separated), built on the C csv module.

    The first ``SNIFF_BYTES`` decide the delimiter (unless given), whether the first row is
    a header (unless forced) and the expected number of fields (the header's, or the most
    common count). Rows with another count, invalid UTF-8 or over ``line_bytes_max`` bytes
    become BadRecords; an over-long record (also a runaway quoted field) is reported at its
    first line and parsing resumes at the next line. Without a header the columns are
    named ``col1``, ``col2``...; blank lines are skipped.
    """

    format: Final = "csv"

    def __init__(
        self,
        *,
        delimiter: str | None = None,
        header: bool | None = None,
        line_bytes_max: int = LINE_BYTES_MAX,
        columns: Sequence[str] | None = None,
        first_line: int = 1,
        sniff_bytes: int = SNIFF_BYTES,
        declared: Collection[str] = (),
        whole_input: bool = True,
    ) -> None:
        if delimiter is not None and (len(delimiter) != 1 or delimiter in "\"\r\n"):
            raise IngestError(
                f"CSV delimiter must be one character other than quote and newline, "
                f"got {delimiter!r}"
            )
        _raise_csv_field_limit(line_bytes_max)
        self._given_delimiter = delimiter
        self._given_header = False if columns is not None else header
        self._declared = frozenset(declared)  # column names the operator gave (--map)
        self.has_header: bool | None = None  # decided from the sample
        self._limit = line_bytes_max
        self._sniff_bytes = sniff_bytes
        self._bom = _BomSkipper()
        self._guard = _LeadGuard("csv", from_start=first_line == 1, whole_input=whole_input)
        self._sniff: bytearray | None = bytearray()  # None once configured
        self._buf = bytearray()
        self._line = first_line  # number of the line starting at _buf[0]
        self._skipping = False
        self._columns: tuple[str, ...] = ()
        self._expected = _UNKNOWN
        self._fixed_columns = tuple(columns) if columns is not None else None
        self._delim = delimiter or ","
        self._record_re, self._records_re = _csv_record_patterns(self._delim)
        if self._fixed_columns is not None and delimiter is not None:
            self._sniff = None  # nothing left to sniff: a part of a file already planned
            self.has_header = False
            self._set_columns(self._fixed_columns)

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    @property
    def delimiter(self) -> str | None:
        """The delimiter in use: given, or sniffed (None until the sample is seen)."""
        return self._delim if self._sniff is None else self._given_delimiter

    def feed(self, data: bytes) -> list[Item]:
        data = self._bom.strip(data)
        out: list[Item] = []
        if self._sniff is not None:
            self._sniff += data
            if len(self._sniff) < self._sniff_bytes:
                return out
            data = self._configure(final=False)
        self._push(data, out, final=False)
        return self._guard.check(out)

    def close(self) -> list[Item]:
        data = self._bom.flush()
        out: list[Item] = []
        if self._sniff is not None:
            self._sniff += data
            data = self._configure(final=True)
        self._push(data, out, final=True)
        return self._guard.check(out)

    def malformed_input(self) -> IngestError | None:
        return self._guard.verdict()

    def cut(self) -> list[Item]:
        out: list[Item] = []
        if self._sniff is not None:  # a short input: decide on what there is, as feed would
            self._push(self._configure(final=False), out, final=False)
        return self._guard.check(out)

    # configuration from the sample

    def _configure(self, *, final: bool) -> bytes:
        """Decide delimiter, header and field count; return the input to parse."""
        assert self._sniff is not None
        data, self._sniff = bytes(self._sniff), None
        sample = data[: self._sniff_bytes]
        if not final and b"\n" in sample:
            sample = sample[: sample.rfind(b"\n") + 1]
        text = sample.decode("utf-8", "replace")
        self._delim = self._given_delimiter or sniff_delimiter(text)
        self._record_re, self._records_re = _csv_record_patterns(self._delim)
        if self._fixed_columns is not None:
            self.has_header = False
            self._set_columns(self._fixed_columns)
            return data
        rows = _sample_rows(text, self._delim)
        if not rows:
            return data
        first = rows[0]
        header_whole = final or self._whole_in(sample, first)
        has_header = self._given_header
        if has_header is None:
            has_header = header_whole and looks_like_header(first.fields, self._declared)
        self.has_header = has_header
        if has_header:
            if not header_whole:
                raise IngestError(f"the CSV header row is longer than {self._sniff_bytes} bytes")
            self._set_columns(tuple(_column_names(first.fields)))
            return self._drop_lines(data, first.last_line)
        counts = Counter(len(r.fields) for r in rows)
        self._set_columns(tuple(f"col{i}" for i in range(1, counts.most_common(1)[0][0] + 1)))
        return data

    def _whole_in(self, sample: bytes, row: _SampleRow) -> bool:
        """Whether ``row`` ends inside the cut sample: its record, from its first line,
        closes with a newline that is not inside an open quote. (The sample's last row
        may be cut at any byte, even within a quoted field that spans lines.)"""
        start = 0
        for _ in range(row.first_line - 1):
            start = sample.index(b"\n", start) + 1
        return self._record_re.match(sample, start) is not None

    def _set_columns(self, columns: tuple[str, ...]) -> None:
        self._columns = columns
        self._expected = len(columns)

    def _drop_lines(self, data: bytes, lines: int) -> bytes:
        """Skip the header: the first ``lines`` lines of the input."""
        pos = 0
        for _ in range(lines):
            newline = data.find(b"\n", pos)
            pos = len(data) if newline < 0 else newline + 1
        self._line += lines
        return data[pos:]

    # framing: whole records in windows of at most line_bytes_max + 1 bytes

    def _push(self, data: bytes, out: list[Item], *, final: bool) -> None:
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            self._line += 1
            self._skipping = False
        buf = self._buf
        buf += data
        if final and buf and not buf.endswith(b"\n"):
            buf += b"\n"
        del buf[: self._frame(buf, out, final=final)]

    def _frame(self, buf: bytearray, out: list[Item], *, final: bool) -> int:
        """Parse every whole record in ``buf``; return how many bytes were consumed.

        Records are cut in windows of ``limit + 1`` bytes, so every block handed to the csv
        module holds only records within the bound, and the check costs nothing per row.
        """
        pos, size, limit = 0, len(buf), self._limit
        while pos < size:
            window_end = min(size, pos + limit + 1)
            if buf.find(b'"', pos, window_end) < 0:
                end = buf.rfind(b"\n", pos, window_end) + 1  # no quotes: records are lines
            else:
                match = self._records_re.match(buf, pos, window_end)
                end = match.end() if match else pos
            if end > pos:
                self._block(bytes(buf[pos:end]), out)
                pos = end
                continue
            if size - pos <= limit and not final:
                break  # an incomplete record: wait for more
            reason = _too_long(limit) if size - pos > limit else "unterminated quoted field"
            out.append(BadRecord(self._line, reason))
            newline = buf.find(b"\n", pos)
            if newline < 0:
                self._skipping = True
                return size
            pos = newline + 1  # resync at the next line
            self._line += 1
        return pos

    def _block(self, block: bytes, out: list[Item]) -> None:
        first = self._line
        self._line += block.count(b"\n")
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            self._block_per_record(block, first, out)
            return
        if "\r" in text and _STRAY_CR.search(text):
            self._block_per_record(block, first, out)
            return
        rows = self._parse_rows(text, first)
        if rows is None:
            self._block_per_record(block, first, out)
            return
        out += rows

    def _parse_rows(self, text: str, first: int) -> list[Item] | None:
        """The fast path: one csv reader over a clean block. None if csv objects."""
        if self._expected == _UNKNOWN:
            self._guess_columns(text)
        records = self._split_lines(text, first)
        if records is not None:
            return records
        reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=self._delim)
        columns, expected = self._columns, self._expected
        rows: list[Item] = []
        append = rows.append
        # The named tuple's own constructor is a Python function: calling tuple's in C
        # skips a frame per record (the fields are all given, in order).
        new = tuple.__new__
        prev = 0
        try:
            for row in reader:
                n = len(row)
                if n == expected:
                    append(new(RawRecord, (first + prev, columns, tuple(row))))
                elif n:
                    append(BadRecord(first + prev, f"expected {expected} fields, got {n}"))
                prev = reader.line_num
        except csv.Error:
            return None
        return rows

    def _split_lines(self, text: str, first: int) -> list[Item] | None:
        """The records of a plain block, or None for any other: a block without quotes,
        carriage returns, NULs or blank lines, each of its lines with the expected number
        of fields. Its records are then its lines cut at the delimiter, which is what the
        csv module reads from them (tested equal), cut by str.split and built by map in
        C: ~0.3 us less per record than a Python loop over a csv reader."""
        if '"' in text or "\r" in text or "\x00" in text or not text.endswith("\n"):
            return None
        lines = text.split("\n")
        lines.pop()  # the empty text after the last newline
        if "" in lines:
            return None
        rows = list(map(str.split, lines, itertools.repeat(self._delim)))
        if set(map(len, rows)) != {self._expected}:
            return None
        return list(map(tuple.__new__, itertools.repeat(RawRecord),
                        zip(range(first, first + len(rows)), itertools.repeat(self._columns),
                            map(tuple, rows))))

    def _guess_columns(self, text: str) -> None:
        """No row in the sample (only blank lines): the first row sets the count."""
        rows = _sample_rows(text, self._delim)
        if rows:
            self._set_columns(tuple(f"col{i}" for i in range(1, len(rows[0].fields) + 1)))

    def _block_per_record(self, block: bytes, first: int, out: list[Item]) -> None:
        """The slow path for a block with invalid UTF-8 or stray carriage returns."""
        pos = 0
        line = first
        while pos < len(block):
            match = self._record_re.match(block, pos)
            end = match.end() if match else block.index(b"\n", pos) + 1
            raw = block[pos:end]
            out += self._one_record(raw, line)
            line += raw.count(b"\n")
            pos = end

    def _one_record(self, raw: bytes, line: int) -> list[Item]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return [BadRecord(line, _utf8_reason(raw, e))]
        reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=self._delim)
        try:
            rows = [row for row in reader if row]
        except csv.Error:
            return [BadRecord(line, "malformed CSV record (carriage return inside a field)")]
        if len(rows) > 1:
            return [BadRecord(line, "malformed CSV record (carriage return inside a field)")]
        return self._parse_rows(text, line) or []


def _column_names(fields: Sequence[str]) -> list[str]:
    """A header's column names, all distinct: two columns under one name would be merged
    in every record, and --map could not tell them apart. A cell without a name of its
    own (empty, as a spreadsheet's trailing delimiter leaves it: ``email,ip,``; or a name
    an earlier cell has, which only ``--header`` lets through) is named by its place,
    ``col<N>``; when a cell of the header already has that name (``email,col3,``), by the
    first place past the row that none has (``col4``)."""
    names = [f.strip() for f in fields]
    taken = set(names)
    spare = (name for name in map("col{}".format, itertools.count(len(names) + 1)) if name not in taken)
    named: set[str] = set()  # the names of the cells so far
    out: list[str] = []
    for place, name in enumerate(names, start=1):
        if not name or name in named:
            name = f"col{place}" if f"col{place}" not in taken else next(spare)
            taken.add(name)
        named.add(name)
        out.append(name)
    return out


# --- combo lists -------------------------------------------------------------------------

_COMBO_SPLIT: Final = re.compile("[" + re.escape("".join(COMBO_DELIMITERS)) + "]")


class _LineFramed:
    """Parsers of one record per line: frame lines, turn them into records, guard the lead."""

    _framer: _LineFramer
    _guard: _LeadGuard

    def _records(self, segments: list[tuple[int, bytes] | BadRecord]) -> list[Item]:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[Item]:
        return self._guard.check(self._records(self._framer.push(data)))

    def close(self) -> list[Item]:
        return self._guard.check(self._records(self._framer.finish()))

    def malformed_input(self) -> IngestError | None:
        return self._guard.verdict()

    def cut(self) -> list[Item]:
        return []  # whole lines went out as they came


class ComboParser(_LineFramed):
    """``login<delim>secret`` lines (``email:password``, ``user;hash``, ``user|pass``).

    Each line is split at its FIRST delimiter only: secrets contain delimiters, logins
    rarely do. Without a given delimiter, the first of ``: ; | tab`` on each line counts,
    so mixed lists (aggregated from several sources) parse too. Columns are ``login`` and
    ``secret``; mapping decides email/username and password/password_hash from values.
    """

    format: Final = "combo"

    def __init__(
        self,
        *,
        delimiter: str | None = None,
        line_bytes_max: int = LINE_BYTES_MAX,
        first_line: int = 1,
        whole_input: bool = True,
    ) -> None:
        if delimiter is not None and (len(delimiter) != 1 or delimiter in "\r\n"):
            raise IngestError(f"combo delimiter must be one character, got {delimiter!r}")
        self.delimiter = delimiter
        self._framer = _LineFramer(line_bytes_max, first_line)
        self._guard = _LeadGuard("a combo list", from_start=first_line == 1, whole_input=whole_input)
        self._no_delimiter = (
            f"no delimiter ({delimiter!r}) in the line"
            if delimiter
            else "no delimiter (one of : ; | tab) in the line"
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return COMBO_COLUMNS

    def _records(self, segments: list[tuple[int, bytes] | BadRecord]) -> list[Item]:
        out: list[Item] = []
        for segment in segments:
            if isinstance(segment, BadRecord):
                out.append(segment)
                continue
            first, block = segment
            try:
                lines = block.decode("utf-8").split("\n")
            except UnicodeDecodeError:
                self._lines_one_by_one(first, block.split(b"\n"), out)
                continue
            self._split_lines(first, lines, out)
        return out

    def _lines_one_by_one(self, first: int, raw_lines: list[bytes], out: list[Item]) -> None:
        for i, raw in enumerate(raw_lines):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                out.append(BadRecord(first + i, _utf8_reason(raw, e)))
                continue
            self._split_lines(first + i, [line], out)

    def _split_lines(self, first: int, lines: list[str], out: list[Item]) -> None:
        search = _first_combo_delimiter if self.delimiter is None else _finder(self.delimiter)
        append = out.append
        for i, line in enumerate(lines):
            if line.endswith("\r"):
                line = line[:-1]
            if not line or line.isspace():
                continue
            k = search(line)
            if k < 0:
                append(BadRecord(first + i, self._no_delimiter))
            else:
                append(RawRecord(first + i, COMBO_COLUMNS, (line[:k], line[k + 1 :])))


def _first_combo_delimiter(line: str) -> int:
    match = _COMBO_SPLIT.search(line)
    return match.start() if match else -1


def _finder(delimiter: str) -> Callable[[str], int]:
    def find(line: str) -> int:
        return line.find(delimiter)

    return find


# --- JSON values to records ----------------------------------------------------------------


class _InexactNumber(Exception):
    """orjson made a float (or a huge int a float): re-parse to keep the source text."""


class _TooDeep(Exception):
    pass


def _walk_object(
    obj: dict[str, object], prefix: str, cols: list[str], vals: list[str], depth: int
) -> None:
    if depth > JSON_DEPTH_MAX:
        raise _TooDeep
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else key
        if type(value) is str:  # the common case, inline
            cols.append(name)
            vals.append(value)
        else:
            _walk(value, name, cols, vals, depth + 1)


def _walk(value: object, name: str, cols: list[str], vals: list[str], depth: int) -> None:
    """Flatten one value: objects -> dotted names, lists -> one value per element."""
    if isinstance(value, str):
        cols.append(name)
        vals.append(value)
    elif isinstance(value, bool):  # before int: bool is an int
        cols.append(name)
        vals.append("true" if value else "false")
    elif isinstance(value, int):
        cols.append(name)
        vals.append(str(value))
    elif isinstance(value, dict):
        _walk_object(value, name, cols, vals, depth)
    elif isinstance(value, list):
        if depth > JSON_DEPTH_MAX:
            raise _TooDeep
        for element in value:
            _walk(element, name, cols, vals, depth + 1)
    elif isinstance(value, float):
        raise _InexactNumber
    # None: the field is absent


_ONLY_STR: Final = {str}


def flatten_json(value: object) -> tuple[list[str], list[str]]:
    """Columns and values of a parsed JSON record. Numbers must arrive as text or int.

    A record that is an array of scalars (``["a@example.com", "192.0.2.1"]``) is a row,
    as in a headerless CSV: its values are columns ``col1``..``colN`` by position, each
    mapped on its own. As one column, a dump of such rows had all its values under one
    kind (the majority's), and every value of the other kinds rejected.
    """
    cols: list[str] = []
    vals: list[str] = []
    if isinstance(value, dict):
        if set(map(type, value.values())) == _ONLY_STR:
            return list(value), list(value.values())  # flat strings: all in C
        _walk_object(value, "", cols, vals, 0)
    elif isinstance(value, list) and not any(isinstance(e, list | dict) for e in value):
        for place, element in enumerate(value, start=1):
            _walk(element, f"col{place}", cols, vals, 1)  # null: absent, the places stay
    else:
        _walk(value, JSON_SCALAR_COLUMN, cols, vals, 0)
    return cols, vals


def _loads_exact(raw: bytes) -> object:
    """Standard-library parse keeping every number as its source text (rare path)."""
    return json.loads(raw, parse_float=str, parse_int=str)


def _json_reason(raw: bytes, error: orjson.JSONDecodeError, *, single_line: bool) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _utf8_reason(raw, e)
    if not raw.strip():
        return "empty record"
    if single_line:
        return f"JSON syntax error at column {error.colno}"
    return f"JSON syntax error at line {error.lineno}, column {error.colno} of the record"


class _JsonRecords:
    """Turns one JSON value's bytes into a record; shares column tuples between records."""

    def __init__(self) -> None:
        self._interned: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._union: dict[str, None] = {}
        self._union_tuple: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        if len(self._union_tuple) != len(self._union):
            self._union_tuple = tuple(self._union)
        return self._union_tuple

    def _record(self, position: int, raw: bytes, *, single_line: bool) -> Item:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return BadRecord(position, _json_reason(raw, e, single_line=single_line))
        try:
            try:
                cols, vals = flatten_json(value)
            except _InexactNumber:
                cols, vals = flatten_json(_loads_exact(raw))
        except _TooDeep:
            return BadRecord(position, f"nested deeper than {JSON_DEPTH_MAX} levels")
        if not vals:
            return BadRecord(position, "record has no values")
        if len(vals) > FIELDS_PER_RECORD_MAX:
            return BadRecord(position, f"more than {FIELDS_PER_RECORD_MAX} fields")
        return RawRecord(position, self._shared(tuple(cols)), tuple(vals))

    def _shared(self, cols: tuple[str, ...]) -> tuple[str, ...]:
        shared = self._interned.get(cols)
        if shared is not None:
            return shared
        if len(self._interned) < INTERNED_COLUMN_SETS_MAX:
            self._interned[cols] = cols
        union = self._union
        for col in cols:
            if col not in union and len(union) < COLUMNS_TRACKED_MAX:
                union[col] = None
        return cols


class NdjsonParser(_JsonRecords, _LineFramed):
    """One JSON value per line (NDJSON / JSON Lines). A bad line is a BadRecord."""

    format: Final = "ndjson"

    def __init__(self, *, line_bytes_max: int = LINE_BYTES_MAX, first_line: int = 1,
                 whole_input: bool = True) -> None:
        super().__init__()
        self._framer = _LineFramer(line_bytes_max, first_line)
        self._guard = _LeadGuard("NDJSON", from_start=first_line == 1, whole_input=whole_input)

    def _records(self, segments: list[tuple[int, bytes] | BadRecord]) -> list[Item]:
        out: list[Item] = []
        for segment in segments:
            if isinstance(segment, BadRecord):
                out.append(segment)
                continue
            first, block = segment
            for i, line in enumerate(block.split(b"\n")):
                if not line or line.isspace():
                    continue
                out.append(self._record(first + i, line, single_line=True))
        return out


# --- JSON documents ------------------------------------------------------------------------

_WS: Final = re.compile(rb"[ \t\r\n]*+")
_STRING: Final = rb'"(?:[^"\\]++|\\[\s\S])*+"'
_STRING_RE: Final = re.compile(_STRING)
_STRING_BODY_RE: Final = re.compile(rb'[^"\\]*+')
_PLAIN: Final = rb'[^"\[\]{}]++'
_PLAIN_RE: Final = re.compile(rb'[^"\[\]{}]*+')
_SCALAR_RE: Final = re.compile(rb'[^\s,\]}\[{"]*+')
_FAST_DEPTH: Final = 4


def _container_pattern(depth: int) -> re.Pattern[bytes]:
    """A whole array/object up to ``depth + 1`` levels deep, strings skipped, in one C call.

    It only delimits (orjson validates); deeper values fail to match and go to the
    resumable scanner, which delimits exactly the same way.
    """
    level = rb"(?:" + _PLAIN + rb"|" + _STRING + rb")*+"
    for _ in range(depth):
        level = rb"(?:" + _PLAIN + rb"|" + _STRING + rb"|[\[{]" + level + rb"[\]}])*+"
    return re.compile(rb"[\[{]" + level + rb"[\]}]")


_CONTAINER_RE: Final = _container_pattern(_FAST_DEPTH)
_NEXT_CONTAINER_RE: Final = re.compile(
    rb"[ \t\r\n]*+,[ \t\r\n]*+(" + _CONTAINER_RE.pattern + rb")"
)

_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPENERS: Final = b"[{"


class _ValueScan:
    """Finds the end of one JSON value across chunks (depth and string state kept).

    ``discard``: the value is too long or not wanted; its bytes are dropped as scanned.
    """

    __slots__ = ("depth", "discard", "i", "in_string", "scalar", "start")

    def __init__(self, start: int, first_byte: int, *, discard: bool = False) -> None:
        self.start = start
        self.i = start
        self.depth = 0
        self.in_string = False
        self.scalar = first_byte not in b'[{"'
        self.discard = discard

    def shift(self, n: int) -> None:
        self.start -= n
        self.i -= n

    def run(self, buf: bytearray, *, final: bool) -> int | None:
        """The end offset of the value, or None if more input is needed."""
        if self.scalar:
            match = _SCALAR_RE.match(buf, self.i)
            end = match.end() if match else self.i
            if end < len(buf) or final:
                return end
            self.i = end
            return None
        i, size = self.i, len(buf)
        while i < size:
            if self.in_string:
                match = _STRING_BODY_RE.match(buf, i)
                i = match.end() if match else i
                if i >= size:
                    break
                if buf[i] == _BACKSLASH:
                    if i + 1 >= size:
                        break  # the escaped byte is in the next chunk
                    i += 2
                    continue
                self.in_string = False
                i += 1
                if self.depth == 0:
                    return i
                continue
            match = _PLAIN_RE.match(buf, i)
            i = match.end() if match else i
            if i >= size:
                break
            byte = buf[i]
            i += 1
            if byte == _QUOTE:
                self.in_string = True
            elif byte in _OPENERS:
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth <= 0:
                    return i
        self.i = i
        return None


# Parser states between values.
_TOP, _ARR_FIRST, _ARR_ELEM, _ARR_NEXT = "top", "arr_first", "arr_elem", "arr_next"
_TRAILING = "trailing"  # after the documents: text that is not JSON, skipped to the end
_OBJ_FIRST, _OBJ_KEY, _OBJ_COLON, _OBJ_VALUE, _OBJ_NEXT = (
    "obj_first", "obj_key", "obj_colon", "obj_value", "obj_next",
)  # fmt: skip


class JsonParser(_JsonRecords):
    """JSON documents, streamed: never the whole document in memory.

    The input is one or more top-level values (whitespace-separated, so concatenated
    JSON works too):

    * an array: each element is a record (objects flattened with dotted keys, arrays of
      scalars as one value per element under the same column, a bare scalar under the
      column ``value``);
    * an object holding, directly, one or more arrays whose first element is an object
      (``{"records": [...]}``, a STIX bundle's ``objects``): a wrapper; the elements of
      those arrays are the records and its other members are ignored as metadata;
    * any other object: a single record.

    ``position`` is the record's 1-based index. Numbers are kept as their source text,
    ``null`` fields are left out, ``true``/``false`` are text. A record over
    ``record_bytes_max`` bytes, with bad syntax or nested deeper than ``JSON_DEPTH_MAX``
    is a BadRecord; broken structure between records (say, a missing comma) raises
    IngestError, since nothing after it can be trusted. A truncated document gives a
    final BadRecord, and so does text that is not JSON after the last document (a stray
    ``}``, a log line): it is skipped to the end, the records before it are kept.
    """

    format: Final = "json"

    def __init__(self, *, record_bytes_max: int = LINE_BYTES_MAX) -> None:
        super().__init__()
        self._limit = record_bytes_max
        self._bom = _BomSkipper()
        self._guard = _LeadGuard("JSON")
        self._buf = bytearray()
        self._pos = 0
        self._dropped_bytes = 0
        self._dropped_lines = 0
        self._state = _TOP
        self._list_return = _TOP  # state after the current record array closes
        self._scan: _ValueScan | None = None
        self._scan_is_member = False
        self._obj_start: int | None = None  # top object kept while it may be one record
        self._obj_wrapper = False
        self._obj_too_long = False
        self._index = 0  # records seen (good or bad)
        self._documents = 0  # top-level values begun
        self._trailing: tuple[int, int] | None = None  # (byte, line) where non-JSON text began
        self._trailing_bytes = 0

    def feed(self, data: bytes) -> list[Item]:
        self._buf += self._bom.strip(data)
        out: list[Item] = []
        self._run(out, final=False)
        return self._guard.check(out)

    def close(self) -> list[Item]:
        self._buf += self._bom.flush()
        out: list[Item] = []
        self._run(out, final=True)
        if self._trailing is not None:
            out.append(self._trailing_text())
        elif self._state != _TOP or self._scan is not None:
            out.append(BadRecord(self._index + 1, "input ends inside the JSON document (truncated?)"))
        return self._guard.check(out)

    def malformed_input(self) -> IngestError | None:
        return self._guard.verdict()

    def cut(self) -> list[Item]:
        return []  # whole records went out as they came

    # the driver

    def _run(self, out: list[Item], *, final: bool) -> None:
        while self._step(out, final=final):
            pass
        self._compact()

    def _step(self, out: list[Item], *, final: bool) -> bool:
        """Advance by one token or value; False when more input is needed."""
        if self._scan is not None:
            return self._continue_scan(out, final=final)
        buf = self._buf
        if self._state == _TRAILING:
            self._trailing_bytes += len(buf) - self._pos
            self._pos = len(buf)
            return False
        match = _WS.match(buf, self._pos)
        self._pos = pos = match.end() if match else self._pos
        if pos >= len(buf):
            return False
        byte = buf[pos]
        state = self._state
        if state in (_ARR_FIRST, _ARR_ELEM):
            return self._array_element(out, byte, final=final)
        if state == _ARR_NEXT:
            return self._element_burst(out) or self._after_element(byte)
        if state == _TOP:
            return self._top_value(byte)
        return self._object_step(out, byte, final=final)

    def _top_value(self, byte: int) -> bool:
        if byte == ord("["):
            self._state, self._list_return = _ARR_FIRST, _TOP
        elif byte == ord("{"):
            self._state = _OBJ_FIRST
            self._obj_start = self._pos
            self._obj_wrapper = self._obj_too_long = False
        elif self._documents:
            self._trailing = (self._offset(), self._line())
            self._state = _TRAILING
            return True
        else:
            raise self._syntax_error("the input is not a JSON array or object")
        self._documents += 1
        self._pos += 1
        return True

    def _trailing_text(self) -> BadRecord:
        """Text after the last JSON document (a stray bracket, a log line): one bad
        record for all of it, so that the records before it are kept."""
        assert self._trailing is not None
        offset, line = self._trailing
        return BadRecord(self._index + 1, f"{self._trailing_bytes} bytes after the JSON document, "
                                          f"from byte {offset} (line {line}), are not JSON: skipped")

    # record arrays

    def _array_element(self, out: list[Item], byte: int, *, final: bool) -> bool:
        if byte == ord("]"):  # empty array, or a tolerated trailing comma
            self._state = self._list_return
            self._pos += 1
            return True
        end = self._fast_end(byte, final=final)
        if end is None:
            self._scan = _ValueScan(self._pos, byte)
            self._scan_is_member = False
            return True
        self._element_done(out, self._pos, end)
        return True

    def _fast_end(self, byte: int, *, final: bool) -> int | None:
        """End of the value at _pos when a single regex finds it, else None."""
        buf, pos = self._buf, self._pos
        if byte in _OPENERS:
            match = _CONTAINER_RE.match(buf, pos)
        elif byte == _QUOTE:
            match = _STRING_RE.match(buf, pos)
        else:
            match = _SCALAR_RE.match(buf, pos)
            if match and match.end() == len(buf) and not final:
                return None  # the number may go on in the next chunk
        return match.end() if match else None

    def _element_done(self, out: list[Item], start: int, end: int) -> None:
        self._index += 1
        if end - start > self._limit:
            out.append(BadRecord(self._index, _too_long(self._limit)))
        elif end == start:
            raise self._syntax_error(f"expected a record after record {self._index - 1}")
        else:
            out.append(self._record(self._index, bytes(self._buf[start:end]), single_line=False))
        self._pos = end
        self._state = _ARR_NEXT

    def _element_burst(self, out: list[Item]) -> bool:
        """The bulk of a big array: ``, {...}`` again and again, one regex call each.

        Anything else (the end, a scalar, deep nesting, a chunk boundary) is left to the
        general steps, which give the same records.
        """
        buf, pos, index, limit = self._buf, self._pos, self._index, self._limit
        match, record, append = _NEXT_CONTAINER_RE.match, self._record, out.append
        while (found := match(buf, pos)) is not None:
            start, pos = found.span(1)
            index += 1
            if pos - start > limit:
                append(BadRecord(index, _too_long(limit)))
            else:
                append(record(index, bytes(buf[start:pos]), single_line=False))
        moved = pos != self._pos
        self._pos, self._index = pos, index
        return moved

    def _after_element(self, byte: int) -> bool:
        if byte == ord(","):
            self._state = _ARR_ELEM
        elif byte == ord("]"):
            self._state = self._list_return
        else:
            raise self._syntax_error(f"expected ',' or ']' after record {self._index}")
        self._pos += 1
        return True

    def _continue_scan(self, out: list[Item], *, final: bool) -> bool:
        scan = self._scan
        assert scan is not None
        end = scan.run(self._buf, final=final)
        if end is None:
            self._check_scan_length(out)
            return False
        self._scan = None
        if self._scan_is_member:
            self._pos = end
            self._state = _OBJ_NEXT
        elif scan.discard:
            self._pos = end
            self._state = _ARR_NEXT
        else:
            self._element_done(out, scan.start, end)
        return True

    def _check_scan_length(self, out: list[Item]) -> None:
        """A pending value over the bound: report it now, then drop it as it is scanned."""
        scan = self._scan
        assert scan is not None
        if self._scan_is_member:
            return  # a member counts toward its object: see _compact
        if scan.discard or len(self._buf) - scan.start <= self._limit:
            return
        scan.discard = True
        self._index += 1
        out.append(BadRecord(self._index, _too_long(self._limit)))

    # the top-level object: a wrapper of record arrays, or one record

    def _object_step(self, out: list[Item], byte: int, *, final: bool) -> bool:
        state = self._state
        if state in (_OBJ_FIRST, _OBJ_KEY):
            if byte == ord("}"):
                return self._object_done(out)
            if byte != _QUOTE:
                raise self._syntax_error("expected a key in the top-level JSON object")
            return self._object_key()
        if state == _OBJ_COLON:
            if byte != ord(":"):
                raise self._syntax_error("expected ':' after a key of the top-level object")
            self._state = _OBJ_VALUE
            self._pos += 1
            return True
        if state == _OBJ_VALUE:
            return self._object_value(byte, final=final)
        if byte == ord(","):
            self._state = _OBJ_KEY
            self._pos += 1
            return True
        if byte == ord("}"):
            return self._object_done(out)
        raise self._syntax_error("expected ',' or '}' in the top-level JSON object")

    def _object_key(self) -> bool:
        match = _STRING_RE.match(self._buf, self._pos)
        if match is None:
            if len(self._buf) - self._pos > self._limit:
                raise self._syntax_error(f"a top-level key is longer than {self._limit} bytes")
            return False
        self._pos = match.end()
        self._state = _OBJ_COLON
        return True

    def _object_value(self, byte: int, *, final: bool) -> bool:
        if byte == ord("["):
            match = _WS.match(self._buf, self._pos + 1)
            after = match.end() if match else self._pos + 1
            if after >= len(self._buf):
                if not final:
                    return False  # cannot tell a record array yet
            elif self._buf[after] == ord("{"):
                self._obj_wrapper = True
                self._obj_start = None  # members are metadata now: stop keeping them
                self._state, self._list_return = _ARR_FIRST, _OBJ_NEXT
                self._pos += 1
                return True
        self._scan = _ValueScan(self._pos, byte, discard=self._obj_start is None)
        self._scan_is_member = True
        return True

    def _object_done(self, out: list[Item]) -> bool:
        end = self._pos + 1
        start = self._obj_start
        if not self._obj_wrapper:
            self._index += 1
            if self._obj_too_long or start is None or end - start > self._limit:
                out.append(BadRecord(self._index, _too_long(self._limit)))
            else:
                out.append(self._record(self._index, bytes(self._buf[start:end]), single_line=False))
        self._obj_start = None
        self._pos = end
        self._state = _TOP
        return True

    # buffer management

    def _compact(self) -> None:
        """Drop consumed bytes; keep only the pending value (or the kept top object)."""
        scan = self._scan
        keep = self._pos if scan is None else scan.i if scan.discard else scan.start
        if self._obj_start is not None:
            if len(self._buf) - self._obj_start > self._limit:
                self._obj_start = None  # one record too long: stop keeping it
                self._obj_too_long = True
                if scan is not None and self._scan_is_member:
                    scan.discard = True
                    keep = scan.i
            else:
                keep = min(keep, self._obj_start)
        if keep <= 0:
            return
        self._dropped_lines += self._buf.count(b"\n", 0, keep)
        self._dropped_bytes += keep
        del self._buf[:keep]
        self._pos = max(0, self._pos - keep)  # while scanning, _pos is not used
        if scan is not None:
            scan.shift(keep)
        if self._obj_start is not None:
            self._obj_start -= keep

    def _offset(self) -> int:
        return self._dropped_bytes + self._pos

    def _line(self) -> int:
        return self._dropped_lines + self._buf.count(b"\n", 0, self._pos) + 1

    def _syntax_error(self, what: str) -> IngestError:
        return IngestError(f"JSON syntax error at byte {self._offset()} (line {self._line()}): {what}")


# --- factory -----------------------------------------------------------------------------

PARSER_FORMATS: Final = ("csv", "tsv", "json", "ndjson", "combo")


def make_parser(
    fmt: str,
    *,
    delimiter: str | None = None,
    header: bool | None = None,
    line_bytes_max: int = LINE_BYTES_MAX,
    columns: Sequence[str] | None = None,
    first_line: int = 1,
    declared: Collection[str] = (),
    whole_input: bool = True,
) -> Parser:
    """A parser for ``fmt`` (see ``PARSER_FORMATS``; "tsv" is CSV with a tab).

    ``delimiter`` applies to csv/tsv/combo, ``header`` to csv/tsv; ``line_bytes_max``
    bounds one record (for JSON: one record's bytes). For parsing a later part of a file
    whose head was already sniffed: ``columns`` fixes the CSV column names (no header is
    read; other formats take their columns from the records and ignore it) and
    ``first_line`` is the line number of the part's first byte (JSON ignores it: its
    positions are record indices). ``declared``: column names the operator gave, which
    make a CSV first row that has one a header (see ``looks_like_header``).
    ``whole_input`` false: the parser reads one planned part of a file (the first one
    too), so input with bad records only is not taken for the wrong format at its end
    (see ``_LeadGuard``); JSON is never cut into parts.
    """
    if line_bytes_max < 1:
        raise IngestError(f"line_bytes_max must be positive, got {line_bytes_max}")
    if first_line < 1:
        raise IngestError(f"first_line must be 1 or more, got {first_line}")
    if fmt in ("csv", "tsv"):
        if fmt == "tsv" and delimiter is None:
            delimiter = "\t"
        return CsvParser(
            delimiter=delimiter,
            header=header,
            line_bytes_max=line_bytes_max,
            columns=columns,
            first_line=first_line,
            declared=declared,
            whole_input=whole_input,
        )
    if fmt not in PARSER_FORMATS:
        raise IngestError(f"unknown format {fmt!r}; expected one of {', '.join(PARSER_FORMATS)}")
    if header:
        raise IngestError(f"a header option applies to csv and tsv, not {fmt}")
    if fmt == "combo":
        return ComboParser(delimiter=delimiter, line_bytes_max=line_bytes_max, first_line=first_line,
                           whole_input=whole_input)
    if delimiter is not None:
        raise IngestError(f"a delimiter applies to csv, tsv and combo, not {fmt}")
    if fmt == "ndjson":
        return NdjsonParser(line_bytes_max=line_bytes_max, first_line=first_line,
                            whole_input=whole_input)
    return JsonParser(record_bytes_max=line_bytes_max)
