"""Ingest readers: compression, format sniffing and the push parsers.

The central property: the records do not depend on where the chunk boundaries fall. It is
checked exhaustively (every split point, byte at a time) on small tricky inputs of each
format and with hypothesis on generated ones; CSV framing is also checked against the
csv module itself.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from heimdall_core.errors import IngestError
from heimdall_core.ingest.parsers import (
    LEADING_BAD_RECORDS_MAX,
    SNIFF_BYTES,
    BadRecord,
    CsvParser,
    Item,
    Parser,
    RawRecord,
    make_parser,
)
from heimdall_core.ingest.sources import (
    AutoDecompressor,
    Decompressor,
    detect_compression,
    detect_format,
    iter_file_chunks,
)

MIB = 1024 * 1024


# --- helpers -----------------------------------------------------------------------------


def parse(parser: Parser, data: bytes, cuts: list[int] | None = None) -> list[Item]:
    """Feed ``data`` split at ``cuts`` (sorted offsets), then close."""
    items: list[Item] = []
    start = 0
    for cut in [*(cuts or []), len(data)]:
        items += parser.feed(data[start:cut])
        start = cut
    return items + parser.close()


def parse_fmt(fmt: str, data: bytes, cuts: list[int] | None = None, **kw: object) -> list[Item]:
    return parse(make_parser(fmt, **kw), data, cuts)  # type: ignore[arg-type]


def bytewise(parser: Parser, data: bytes) -> list[Item]:
    return parse(parser, data, list(range(1, len(data))))


def good(items: list[Item]) -> list[tuple[int, dict[str, str]]]:
    return [(i.position, dict(zip(i.columns, i.values, strict=True)))
            for i in items if isinstance(i, RawRecord)]  # fmt: skip


def bad(items: list[Item]) -> list[tuple[int, str]]:
    return [(i.position, i.reason) for i in items if isinstance(i, BadRecord)]


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


def decompress_chunked(kind: str, blob: bytes, chunk: int, **kw: int) -> bytes:
    d = Decompressor(kind, **kw)
    out = b"".join(d.feed(blob[i : i + chunk]) for i in range(0, len(blob), chunk))
    return out + d.close()


# --- compression -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_detect_compression(kind: str) -> None:
    assert detect_compression(COMPRESSORS[kind](b"hello\n")) == kind


def test_detect_compression_plain_text_is_none() -> None:
    for head in (b"", b"a,b\n", b"BZh is a word\n", b"BZh9 but no block magic", b"\x1f"):
        assert detect_compression(head) is None


@pytest.mark.parametrize("kind", list(COMPRESSORS))
@pytest.mark.parametrize("chunk", [1, 7, 4096, 10 * MIB])
def test_decompress_any_chunking(kind: str, chunk: int) -> None:
    lines = 200 if chunk == 1 else 20_000  # byte at a time is slow in Python
    data = b"".join(b"user%d@example.com,secret%d\n" % (i, i) for i in range(lines))
    assert decompress_chunked(kind, COMPRESSORS[kind](data), chunk) == data


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_concatenated_members_and_nul_padding(kind: str) -> None:
    compress = COMPRESSORS[kind]
    blob = compress(b"first\n") + compress(b"second\n") + b"\x00" * 8
    for chunk in (1, 3, 1000):
        assert decompress_chunked(kind, blob, chunk) == b"first\nsecond\n"


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_truncated_stream_is_an_error(kind: str) -> None:
    blob = COMPRESSORS[kind](bytes(range(256)) * 400)
    d = Decompressor(kind)
    d.feed(blob[: len(blob) // 2])
    with pytest.raises(IngestError, match="truncated"):
        d.close()


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_trailing_garbage_is_an_error(kind: str) -> None:
    with pytest.raises(IngestError, match="trailing data"):
        decompress_chunked(kind, COMPRESSORS[kind](b"data\n") + b"not compressed", 5)


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_corrupt_data_is_an_error(kind: str) -> None:
    blob = bytearray(COMPRESSORS[kind](b"".join(b"line %d\n" % i for i in range(5000))))
    for i in range(20, len(blob) - 20):
        blob[i] ^= 0x55
    with pytest.raises(IngestError):
        decompress_chunked(kind, bytes(blob), 1000)


def _zero_bomb(kind: str, size: int) -> bytes:
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=19).compress(b"\x00" * size)
    if kind == "gzip":
        return gzip.compress(b"\x00" * size, compresslevel=9)
    if kind == "bz2":
        return bz2.compress(b"\x00" * size)
    return lzma.compress(b"\x00" * size, preset=6)  # its 8 MiB window is decoder memory too


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_bomb_is_refused_with_bounded_memory(kind: str) -> None:
    bomb = _zero_bomb(kind, 64 * MIB)
    tracemalloc.start()
    try:
        with pytest.raises(IngestError, match="COMPRESSION_RATIO_MAX"):
            Decompressor(kind, ratio_max=50, ratio_grace_bytes=MIB).feed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * MIB, peak  # budget (~1 MiB + 50x input) plus one piece, not 64 MiB


def test_bomb_behind_a_legitimate_prefix_is_refused_per_call() -> None:
    # The prefix earns a large total budget; the per-call ratio still catches the bomb.
    prefix = gzip.compress(bytes(range(256)) * 4096, compresslevel=0)
    d = Decompressor("gzip", ratio_max=50, ratio_grace_bytes=MIB)
    assert len(d.feed(prefix)) == 256 * 4096
    with pytest.raises(IngestError, match="COMPRESSION_RATIO_MAX"):
        d.feed(_zero_bomb("gzip", 32 * MIB))


def test_decompressed_size_limit() -> None:
    blob = gzip.compress(b"abc\n" * MIB)
    with pytest.raises(IngestError, match="DECOMPRESSED_BYTES_MAX"):
        decompress_chunked("gzip", blob, 4096, output_bytes_max=MIB)


def test_failed_decompressor_stays_failed() -> None:
    d = Decompressor("gzip", output_bytes_max=10)
    with pytest.raises(IngestError):
        d.feed(gzip.compress(b"x" * 100))
    with pytest.raises(IngestError, match="already failed"):
        d.feed(b"")


def test_auto_decompressor_passes_plain_text_through_tiny_chunks() -> None:
    data = b"a,b\n1,2\n"
    auto = AutoDecompressor()
    out = b"".join(auto.feed(data[i : i + 1]) for i in range(len(data))) + auto.close()
    assert out == data
    assert auto.compression == "none"
    short = AutoDecompressor()
    assert short.feed(b"x") == b""
    assert short.close() == b"x"


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_auto_decompressor_recognises_split_magic(kind: str) -> None:
    data = b"email\na@b.example\n" * 100
    blob = COMPRESSORS[kind](data)
    auto = AutoDecompressor()
    out = b"".join(auto.feed(blob[i : i + 3]) for i in range(0, len(blob), 3)) + auto.close()
    assert out == data
    assert auto.compression == kind


def test_iter_file_chunks(tmp_path: Path) -> None:
    path = tmp_path / "dump.csv"
    path.write_bytes(b"x" * 10_000)
    chunks = list(iter_file_chunks(path, 4096))
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    with pytest.raises(IngestError):
        list(iter_file_chunks(path, 0))


# --- format detection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"email,password\na@b.c,x\n", "csv"),
        (b"\xef\xbb\xbfemail;password\na@b.c;x\n", "csv"),
        (b"a\tb\tc\n1\t2\t3\n", "csv"),
        (b"1.2.3.4\n5.6.7.8\n", "csv"),
        (b"2001:db8::1\nfe80::2\n", "csv"),
        (b"https://evil.example/x\nhttp://b.example/\n", "csv"),
        (b"a@b.c;x;1.2.3.4\nd@e.f;y;5.6.7.8\n", "csv"),
        (b"email:password\na@b.c:x\n", "csv"),
        (b"a@b.c:hunter2\nd@e.f:pa:ss\nuser|pw\n", "combo"),
        (b"  [{\"a\": 1}]", "json"),
        (b'{\n  "a": 1\n}\n', "json"),
        (b'{"records": [{"a": 1}, {"a": 2}]}', "json"),
        (b'{"a": 1}\n{"a": 2}\n', "ndjson"),
        (b'{"a": 1}', "ndjson"),
        (b'["a@b.example", "1.2.3.4"]\n["c@d.example", "5.6.7.8"]\n', "ndjson"),  # rows
        (b'["a@b.example", "1.2.3.4"]\n', "json"),  # one array of scalar records
        (b'[{"a": 1}]\n[{"a": 2}]\n', "json"),
        (b'[["a", "b"],\n ["c", "d"]]\n', "json"),
    ],
)
def test_detect_format(head: bytes, fmt: str) -> None:
    assert detect_format(head) == fmt


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"", "empty"),
        (b" \n\r\n\t", "empty"),
        (b"\xef\xbb\xbf", "empty"),
        (b"PK\x03\x04\x00\x00binary", "binary"),
        (bytes(range(1, 32)) * 10, "binary"),
        (bytes(range(128, 256)) * 10, "not UTF-8"),
        (gzip.compress(b"a,b\n"), "gzip-compressed"),
        ("a,b\n".encode("utf-16"), "UTF-16"),
    ],
)
def test_detect_format_refuses(head: bytes, message: str) -> None:
    with pytest.raises(IngestError, match=message):
        detect_format(head)


# --- CSV ---------------------------------------------------------------------------------

TRICKY_CSV = (
    b"\xef\xbb\xbfemail,password,ip\r\n"
    b'a@b.example,"pa,""ss",1.2.3.4\r\n'
    b'c@d.example,"multi\r\nline \xc3\xa9",5.6.7.8\r\n'
    b"ragged,row\r\n"
    b"x@y.example,\xff\xfe,9.9.9.9\r\n"
    b"\r\n"
    b"last@x.example,p\xe2\x82\xac,1.1.1.1"
)


def test_csv_tricky_input() -> None:
    items = parse_fmt("csv", TRICKY_CSV)
    assert good(items) == [
        (2, {"email": "a@b.example", "password": 'pa,"ss', "ip": "1.2.3.4"}),
        (3, {"email": "c@d.example", "password": "multi\r\nline é", "ip": "5.6.7.8"}),
        (8, {"email": "last@x.example", "password": "p€", "ip": "1.1.1.1"}),
    ]
    assert bad(items) == [
        (5, "expected 3 fields, got 2"),
        (6, "invalid UTF-8 at byte 13 of the line"),
    ]


def test_csv_records_share_one_columns_tuple() -> None:
    items = parse_fmt("csv", b"a,b\n1,2\n3,4\n")
    assert all(isinstance(i, RawRecord) for i in items)
    assert items[0].columns is items[1].columns  # type: ignore[union-attr]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|", ":"])
def test_csv_delimiter_sniffing(delimiter: str) -> None:
    rows = [["user", "email", "ip"], ["bob", "b@x.example", "1.2.3.4"], ["al", "a@x.ex", "::1"]]
    text = "\n".join(delimiter.join(r) for r in rows if delimiter != ":" or "::1" not in r)
    parser = CsvParser()
    items = parse(parser, text.encode())
    assert parser.delimiter == delimiter
    assert parser.columns == ("user", "email", "ip")
    assert good(items)[0] == (2, {"user": "bob", "email": "b@x.example", "ip": "1.2.3.4"})


def test_csv_without_header_gets_positional_columns() -> None:
    parser = CsvParser()
    items = parse(parser, b"a@b.example,1.2.3.4\nc@d.example,5.6.7.8\n")
    assert parser.has_header is False
    assert parser.columns == ("col1", "col2")
    assert [p for p, _ in good(items)] == [1, 2]


def test_csv_header_heuristics() -> None:
    names = CsvParser()
    parse(names, b"alice,bob\ncarol,dave\nerin,frank\n")  # data that looks like names
    assert names.has_header is False
    known = CsvParser()
    parse(known, b"colour,size,email\nred,10,a@b.example\nblue,12,c@d.example\n")
    assert known.has_header is True
    assert known.columns == ("colour", "size", "email")


@pytest.mark.parametrize("trailing", [b",", b",,", b", "])
def test_csv_header_with_empty_last_names_is_a_header(trailing: bytes) -> None:
    """A spreadsheet's CSV writes a delimiter after the last name (``email,ip,``): still a
    header; the unnamed columns are named by their place."""
    parser = CsvParser()
    rows = b"a@b.example,192.0.2.1" + trailing + b"\nc@d.example,192.0.2.2" + trailing + b"\n"
    items = parse(parser, b"email,ip" + trailing + b"\n" + rows)
    assert parser.has_header is True
    assert parser.columns == ("email", "ip", *(f"col{i}" for i in range(3, 3 + trailing.count(b","))))
    assert [(p, r["email"], r["ip"]) for p, r in good(items)] == [
        (2, "a@b.example", "192.0.2.1"), (3, "c@d.example", "192.0.2.2")]


@pytest.mark.parametrize(("header", "forced", "columns"), [
    (b"email,col3,", None, ("email", "col3", "col4")),  # col3 is the second's: the next free place
    (b"email,col3,,", None, ("email", "col3", "col5", "col4")),  # past the row: col5
    (b"email,col4,,", None, ("email", "col4", "col3", "col5")),
    (b"email,email", True, ("email", "col2")),  # a repeated name, only with --header
    (b"email,,ip,col2", True, ("email", "col5", "ip", "col2")),
])
def test_csv_header_names_are_distinct(header: bytes, forced: bool | None,
                                       columns: tuple[str, ...]) -> None:
    """Two columns under one name would be merged in every record: a cell with no name of
    its own is named by a place no cell of the header has."""
    parser = CsvParser(header=forced)
    row = b",".join(b"v%d" % i for i in range(len(columns)))
    parse(parser, header + b"\n" + row.replace(b"v0", b"a@b.example") + b"\n")
    assert parser.has_header is True
    assert parser.columns == columns


def test_csv_header_with_an_empty_name_in_the_middle_is_data() -> None:
    parser = CsvParser()
    items = parse(parser, b"email,,ip\na@b.example,x,192.0.2.1\nc@d.example,y,192.0.2.2\n")
    assert parser.has_header is False
    assert [p for p, _ in good(items)] == [1, 2, 3]


@pytest.mark.parametrize("first", [
    b",email",  # an empty name first is no trailing delimiter
    b"colour,shade",  # names, but none a known column name: --header says so
    b"jsmith,Winter2024",  # a headerless user list: its first row is data
    b"email,+44 7700 900123",  # a known name beside a value (a phone number)
    b"john_email,qwerty",  # a name containing a known word is no known name
    b"admin.user,hunter2",
])
def test_csv_first_row_is_data_unless_it_has_known_names(first: bytes) -> None:
    parser = CsvParser()
    items = parse(parser, first + b"\nmaria.k,P@ssw0rd!\ntom_r,qwerty#1\nanna,Secr3t$$\n")
    assert parser.has_header is False
    assert parser.columns == ("col1", "col2")
    assert [p for p, _ in good(items)] == [1, 2, 3, 4]


@pytest.mark.parametrize("row", [
    b"a@b.example," + b"x" * (2 * SNIFF_BYTES),
    b'a@b.example,"' + b"x" * (2 * SNIFF_BYTES) + b'"',
])
def test_csv_header_kept_when_the_first_row_is_longer_than_the_sample(row: bytes) -> None:
    """The sample is cut at its last newline: a header ending right there is whole."""
    parser = CsvParser(line_bytes_max=4 * SNIFF_BYTES)
    items = parse(parser, b"email,name\n" + row + b"\nc@d.example,y\n")
    assert parser.has_header is True
    assert parser.columns == ("email", "name")
    assert [p for p, _ in good(items)] == [2, 3]


def test_csv_header_cut_inside_a_quoted_field_is_not_whole() -> None:
    parser = CsvParser()
    parse(parser, b'email,"na\nme' + b"x" * (2 * SNIFF_BYTES) + b'"\nc@d.example,y\n')
    assert parser.has_header is False
    with pytest.raises(IngestError, match="header row is longer than"):
        parse(CsvParser(header=True), b'email,"na\nme' + b"x" * (2 * SNIFF_BYTES) + b'"\n')


def test_csv_forced_header_options() -> None:
    items = parse_fmt("csv", b"a@b.example,x\nc@d.example,y\n", header=True)
    assert good(items) == [(2, {"a@b.example": "c@d.example", "x": "y"})]
    items = parse_fmt("csv", b"email,password\na@b.example,x\n", header=False)
    assert [p for p, _ in good(items)] == [1, 2]


def test_tsv_alias_and_given_delimiter() -> None:
    items = parse_fmt("tsv", b"a\tb\n1,2\t3\n", header=True)
    assert good(items) == [(2, {"a": "1,2", "b": "3"})]
    items = parse_fmt("csv", b"a|b\n1,2|3\n", delimiter="|", header=True)
    assert good(items) == [(2, {"a": "1,2", "b": "3"})]


def test_csv_over_long_line_is_skipped_and_parsing_resyncs() -> None:
    data = b"a,b\n1,2\n" + b"x" * 5000 + b",y\n3,4\n" + b"z" * 300 + b"\n5,6\n"
    for cuts in ([], [10], list(range(0, len(data), 7))):
        items = parse_fmt("csv", data, cuts, line_bytes_max=200, header=True)
        assert good(items) == [(2, {"a": "1", "b": "2"}), (4, {"a": "3", "b": "4"}),
                               (6, {"a": "5", "b": "6"})]  # fmt: skip
        assert bad(items) == [(3, "record longer than 200 bytes"), (5, "record longer than 200 bytes")]


def test_csv_runaway_quoted_field_is_reported_at_its_line() -> None:
    lines = b"".join(b"u%d,p%d\n" % (i, i) for i in range(50))
    data = b"a,b\n1,2\n3,\"oops\n" + lines
    items = parse_fmt("csv", data, line_bytes_max=100, header=True)
    assert bad(items)[0] == (3, "record longer than 100 bytes")
    positions = [p for p, _ in good(items)]
    assert positions[0] == 2 and positions[-1] == 53  # resynced: later lines all parsed


def test_csv_unterminated_quote_at_end() -> None:
    items = parse_fmt("csv", b'a,b\n1,2\n3,"never closed\n4,5\n', header=True)
    assert bad(items) == [(3, "unterminated quoted field")]
    assert good(items) == [(2, {"a": "1", "b": "2"}), (4, {"a": "4", "b": "5"})]


def test_csv_stray_carriage_return_is_a_bad_record() -> None:
    items = parse_fmt("csv", b"a,b\n1,2\nbro\rken,x\n5,6\n", header=True)
    assert bad(items) == [(3, "malformed CSV record (carriage return inside a field)")]
    assert [p for p, _ in good(items)] == [2, 4]


def test_csv_empty_and_blank_input() -> None:
    assert parse_fmt("csv", b"") == []
    assert parse_fmt("csv", b"\n\r\n\n") == []
    assert parse_fmt("csv", b"\xef\xbb\xbf") == []


def test_csv_fixed_columns_and_first_line_for_a_file_part() -> None:
    parser = make_parser("csv", delimiter=";", columns=("email", "pw"), first_line=1001)
    items = parse(parser, b"a@b.example;x\nc@d.example;y;z\n")
    assert parser.columns == ("email", "pw")
    assert good(items) == [(1001, {"email": "a@b.example", "pw": "x"})]
    assert bad(items) == [(1002, "expected 2 fields, got 3")]


def test_binary_passed_as_csv_is_refused_by_detection_and_stopped_by_the_parser() -> None:
    binary = bytes(range(256)) * 64
    with pytest.raises(IngestError, match="binary"):
        detect_format(binary)
    # Forced through anyway: 1000 bad records before any good one stop the file.
    lines = b"".join(b"\xff\xfe%d\x00,\x81\n" % i for i in range(LEADING_BAD_RECORDS_MAX + 5))
    with pytest.raises(IngestError, match="probably not csv"):
        parse_fmt("csv", b"a,b\n" + lines, header=True)


# --- combo lists -------------------------------------------------------------------------


def test_combo_splits_on_the_first_delimiter_only() -> None:
    data = b"a@b.example:pa:ss;w|d\r\nuser;$2b$10$abc\nbob|x:y\n\nnodelim\n\xffbad:x\ne@f.example:\n"
    items = parse_fmt("combo", data)
    assert good(items) == [
        (1, {"login": "a@b.example", "secret": "pa:ss;w|d"}),
        (2, {"login": "user", "secret": "$2b$10$abc"}),
        (3, {"login": "bob", "secret": "x:y"}),
        (7, {"login": "e@f.example", "secret": ""}),
    ]
    assert bad(items) == [
        (5, "no delimiter (one of : ; | tab) in the line"),
        (6, "invalid UTF-8 at byte 1 of the line"),
    ]


def test_combo_with_a_given_delimiter() -> None:
    items = parse_fmt("combo", b"a:b;c\nd;e\n", delimiter=";")
    assert good(items) == [(1, {"login": "a:b", "secret": "c"}), (2, {"login": "d", "secret": "e"})]


def test_combo_long_line() -> None:
    items = parse_fmt("combo", b"a:b\n" + b"c" * 500 + b":d\ne:f", [100, 200], line_bytes_max=64)
    assert bad(items) == [(2, "line longer than 64 bytes")]
    assert [p for p, _ in good(items)] == [1, 3]


# --- NDJSON ------------------------------------------------------------------------------


def test_ndjson_records_flattening_and_numbers() -> None:
    data = (
        b'{"email":"a@b.example","geo":{"ip":"1.2.3.4","asn":64500},"tags":["x","y"],'
        b'"score":1.10,"exp":1e5,"big":123456789012345678901234567890,"n":null,"ok":true}\n'
        b"\n"
        b'{"email": "c@d.example", "nested": [{"h": "m1"}, {"h": "m2"}]}\r\n'
        b'{"broken": \n'
        b'"just a string"\n'
        b'{"x": "\xff"}\n'
        b"{}\n"
    )
    items = parse_fmt("ndjson", data)
    assert [(i.position, i.columns, i.values) for i in items if isinstance(i, RawRecord)] == [
        (1, ("email", "geo.ip", "geo.asn", "tags", "tags", "score", "exp", "big", "ok"),
         ("a@b.example", "1.2.3.4", "64500", "x", "y", "1.10", "1e5",
          "123456789012345678901234567890", "true")),
        (3, ("email", "nested.h", "nested.h"), ("c@d.example", "m1", "m2")),
        (5, ("value",), ("just a string",)),
    ]  # fmt: skip
    assert bad(items) == [
        (4, "JSON syntax error at column 12"),
        (6, "invalid UTF-8 at byte 8 of the line"),
        (7, "record has no values"),
    ]


def test_ndjson_columns_union_and_shared_tuples() -> None:
    parser = make_parser("ndjson")
    items = parse(parser, b'{"a":"1"}\n{"a":"2"}\n{"b":"3","a":"4"}\n')
    assert parser.columns == ("a", "b")
    assert items[0].columns is items[1].columns  # type: ignore[union-attr]


def test_ndjson_too_deep_and_too_long() -> None:
    deep = b'{"a":' * 70 + b"1" + b"}" * 70
    items = parse_fmt("ndjson", deep + b"\n" + b'{"a":"' + b"x" * 600 + b'"}\n{"a":"ok"}\n',
                      line_bytes_max=500)  # fmt: skip
    assert bad(items) == [(1, "nested deeper than 64 levels"), (2, "line longer than 500 bytes")]
    assert good(items) == [(3, {"a": "ok"})]


def test_csv_forced_as_ndjson_is_all_bad_then_stopped() -> None:
    small = parse_fmt("ndjson", b"email,password\na@b.example,x\n")
    assert [r for _, r in bad(small)] == ["JSON syntax error at column 1"] * 2
    big = b"email,password\n" + b"a@b.example,x\n" * LEADING_BAD_RECORDS_MAX
    with pytest.raises(IngestError, match="probably not NDJSON"):
        parse_fmt("ndjson", big)


# --- JSON --------------------------------------------------------------------------------


def test_json_array_of_records() -> None:
    data = (
        b'[\n {"email": "a@b.example", "geo": {"ip": "1.2.3.4"}, "n": 1.50},\n'
        b' {"email": "c\\"d@e.example", "tags": ["t1", "t2"]},\n'
        b' "bare-string", 42, ["x", "y"],\n'
        b' {"a": {"b": {"c": {"d": {"e": {"f": {"g": "deep"}}}}}}},\n'
        b' {"bad": tru},\n'
        b" {}\n]\n"
    )
    items = parse_fmt("json", data)
    assert [(i.position, i.columns, i.values) for i in items if isinstance(i, RawRecord)] == [
        (1, ("email", "geo.ip", "n"), ("a@b.example", "1.2.3.4", "1.50")),
        (2, ("email", "tags", "tags"), ('c"d@e.example', "t1", "t2")),
        (3, ("value",), ("bare-string",)),
        (4, ("value",), ("42",)),
        (5, ("col1", "col2"), ("x", "y")),  # a row: one column per place
        (6, ("a.b.c.d.e.f.g",), ("deep",)),
    ]
    assert bad(items) == [
        (7, "JSON syntax error at line 1, column 9 of the record"),
        (8, "record has no values"),
    ]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_an_array_of_scalars_is_a_row_with_a_column_per_place(fmt: str) -> None:
    rows = [["a1@example.com", "192.0.2.1", 7, True], ["a2@example.com", None, "x"],
            ["a3@example.com", "192.0.2.3", 1.50], ["nested", ["no"]], []]
    if fmt == "json":
        data = orjson.dumps(rows).replace(b"1.5", b"1.50")
    else:
        data = b"".join(orjson.dumps(r).replace(b"1.5", b"1.50") + b"\n" for r in rows)
    items = parse_fmt(fmt, data)
    assert [(i.position, i.columns, i.values) for i in items if isinstance(i, RawRecord)] == [
        (1, ("col1", "col2", "col3", "col4"), ("a1@example.com", "192.0.2.1", "7", "true")),
        (2, ("col1", "col3"), ("a2@example.com", "x")),  # null: absent, the places stay
        (3, ("col1", "col2", "col3"), ("a3@example.com", "192.0.2.3", "1.50")),
        # Not a row of scalars: flattened as before, one column "value".
        (4, ("value", "value"), ("nested", "no")),
    ]
    assert bad(items) == [(5, "record has no values")]


def test_json_wrapper_object_streams_its_record_arrays() -> None:
    data = (
        b'{"type": "bundle", "id": "bundle--1", "meta": {"n": 2},\n'
        b' "objects": [{"type": "ipv4-addr", "value": "1.2.3.4"}, {"type": "x", "value": "y"}],\n'
        b' "more": [{"a": "b"}], "after": "ignored"}'
    )
    items = parse_fmt("json", data)
    assert good(items) == [
        (1, {"type": "ipv4-addr", "value": "1.2.3.4"}),
        (2, {"type": "x", "value": "y"}),
        (3, {"a": "b"}),
    ]


def test_json_single_object_and_concatenated_values() -> None:
    data = b'{"email": "a@b.example", "ips": ["1.1.1.1", "2.2.2.2"], "x": []}\n{"b": "c"} [{"d": "e"}]'
    items = parse_fmt("json", data)
    assert good(items) == [
        (1, {"email": "a@b.example", "ips": "2.2.2.2"}),
        (2, {"b": "c"}),
        (3, {"d": "e"}),
    ]
    assert items[0].values == ("a@b.example", "1.1.1.1", "2.2.2.2")  # type: ignore[union-attr]


def test_json_record_too_long_is_skipped_without_buffering() -> None:
    huge = b'{"blob": "' + b"x" * (4 * MIB) + b'"}'
    data = b'[{"a": "1"}, ' + huge + b', {"a": "2"}]'
    for chunk in (len(data), 65536):
        parser = make_parser("json", line_bytes_max=1000)
        tracemalloc.start()
        try:
            items = parse(parser, data, list(range(chunk, len(data), chunk)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert good(items) == [(1, {"a": "1"}), (3, {"a": "2"})]
        assert bad(items) == [(2, "record longer than 1000 bytes")]
        if chunk == 65536:
            assert peak < MIB, peak


def test_json_too_long_single_object_and_wrapper_metadata() -> None:
    long_object = b'{"a": "' + b"x" * 500 + b'"}'
    assert bad(parse_fmt("json", long_object, [50, 100], line_bytes_max=100)) == [
        (1, "record longer than 100 bytes")
    ]
    # Long metadata in a wrapper is dropped, the records still come through.
    wrapper = b'{"meta": "' + b"m" * 500 + b'", "records": [{"a": "1"}]}'
    assert good(parse_fmt("json", wrapper, [50, 100], line_bytes_max=100)) == [(1, {"a": "1"})]


def test_json_truncated_document_ends_with_a_bad_record() -> None:
    items = parse_fmt("json", b'[{"a": "1"}, {"a": "2"')
    assert good(items) == [(1, {"a": "1"})]
    assert bad(items) == [(2, "input ends inside the JSON document (truncated?)")]


@pytest.mark.parametrize(
    "data",
    [b"email,password\na@b.example,x\n", b'[{"a": 1} {"b": 2}]', b'{"a" 1}', b"\n]"],
)
def test_json_broken_structure_raises_with_a_position(data: bytes) -> None:
    with pytest.raises(IngestError, match=r"JSON syntax error at byte \d+ \(line \d+\)"):
        parse_fmt("json", data)


@pytest.mark.parametrize("tail", [b"]", b"\n}\n", b"\nnot json at all\n{\"a\": \"9\"}\n"])
def test_text_after_the_json_document_is_one_bad_record(tail: bytes) -> None:
    """A stray bracket or a log line after the document costs the tail, not the records
    before it (they may be in the batch not yet logged); every split gives the same."""
    document = b'[{"a": "1"},\n {"a": "2"}]'
    data = document + tail
    for items in (parse_fmt("json", data), bytewise(make_parser("json"), data)):
        assert good(items) == [(1, {"a": "1"}), (2, {"a": "2"})]
        offset = len(document) + len(tail) - len(tail.lstrip())
        line = data.count(b"\n", 0, offset) + 1
        assert bad(items) == [(3, f"{len(data) - offset} bytes after the JSON document, from "
                                  f"byte {offset} (line {line}), are not JSON: skipped")]


def test_json_columns_union() -> None:
    parser = make_parser("json")
    parse(parser, b'[{"a": "1"}, {"b": {"c": "2"}}, {"a": "3", "d": ["4"]}]')
    assert parser.columns == ("a", "b.c", "d")


# --- reasons never carry input -----------------------------------------------------------

SECRET = "S3cr3tValue"


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("csv", f"a,b\n{SECRET},x,y\n{SECRET}\xff,z\n\"{SECRET}\n".encode("latin-1")),
        ("combo", f"{SECRET}\n{SECRET}\xff:x\n".encode("latin-1")),
        ("ndjson", f'{{"{SECRET}": tru}}\n{SECRET}\n{{"a": "{SECRET}\xff"}}\n'.encode("latin-1")),
        ("json", f'[{{"{SECRET}": {SECRET}}}, {{"a": "{SECRET}\xff"}}, "x'.encode("latin-1")),
    ],
)
def test_bad_record_reasons_are_pii_safe(fmt: str, data: bytes) -> None:
    reasons = [reason for _, reason in bad(parse_fmt(fmt, data, line_bytes_max=64))]
    assert len(reasons) >= 2
    assert not any(SECRET in r or "\xff" in r for r in reasons)


# --- compressed inputs end to end --------------------------------------------------------

SAMPLES = {
    "csv": TRICKY_CSV,
    "combo": b"a@b.example:pa:ss\nuser;hash\n",
    "ndjson": b'{"a": "1"}\n{"a": "2", "b": {"c": 3}}\n',
    "json": b'{"records": [{"a": "1"}, {"a": "2"}]}',
}


@pytest.mark.parametrize("kind", list(COMPRESSORS))
@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_compressed_inputs_give_the_same_records(kind: str, fmt: str) -> None:
    plain = SAMPLES[fmt]
    blob = COMPRESSORS[kind](plain)
    auto = AutoDecompressor()
    text = b"".join(auto.feed(blob[i : i + 5]) for i in range(0, len(blob), 5)) + auto.close()
    assert auto.compression == kind
    assert detect_format(text) == fmt
    assert parse_fmt(fmt, text, [3, 17]) == parse_fmt(fmt, plain)


# --- chunk boundaries anywhere -----------------------------------------------------------

SPLIT_CASES: list[tuple[str, bytes, dict[str, object]]] = [
    ("csv", TRICKY_CSV, {"sniff_bytes": 40}),
    ("csv", b'a;b\n"x\r\n;y";"\xe2\x82\xac"""\n' + b"q" * 90 + b";z\n1;2", {"sniff_bytes": 8,
                                                                                   "line_bytes_max": 40}),
    ("combo", b"\xef\xbb\xbfa@b.example:p\xc3\xa9:x\r\n" + b"y" * 50 + b":z\nu|v", {"line_bytes_max": 30}),
    ("ndjson", b'{"a":"\\"\\u00e9\xc3\xa9","n":[1,{"b":2}]}\r\n\n{bad\n' + b" " * 60 + b"{}\n{\"c\":1.5}",
     {"line_bytes_max": 50}),
    ("json", b'\xef\xbb\xbf [ {"a":"x\\"]}\\\\","b":[1,{"c":"\xc3\xa9"}]} , "s\\"", -1.5e3, {"d":{"e":{"f":'
             b'{"g":{"h":{"i":"deep"}}}}}}, {"long":"' + b"L" * 60 + b'"}, [] ]', {"line_bytes_max": 60}),
    ("json", b'{"meta":{"x":[1]},"records":[{"a":"1"},{"b":"2"}],"tail":"t"} {"single":"o"}', {}),
]  # fmt: skip


def _parser(fmt: str, options: dict[str, object]) -> Parser:
    if fmt == "csv":
        return CsvParser(**options)  # type: ignore[arg-type]
    return make_parser(fmt, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "data", "options"), SPLIT_CASES)
def test_every_split_point_gives_the_same_records(
    fmt: str, data: bytes, options: dict[str, object]
) -> None:
    whole = parse(_parser(fmt, options), data)
    assert good(whole)
    assert bad(whole) or "records" in data.decode("utf-8", "replace")  # bad ones, but a wrapper
    for cut in range(len(data) + 1):
        assert parse(_parser(fmt, options), data, [cut]) == whole, cut
    for first in range(0, len(data), 7):
        for second in range(first, len(data), 11):
            assert parse(_parser(fmt, options), data, [first, second]) == whole
    assert bytewise(_parser(fmt, options), data) == whole


@st.composite
def split_points(draw: st.DrawFn, size: int) -> list[int]:
    return sorted(draw(st.lists(st.integers(0, size), max_size=12)))


CSV_TOKENS = ["a", "bc", "é", "€", ",", ";", '"', '""', "\n", "\r\n", " ", "x@y.example"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.lists(st.sampled_from(CSV_TOKENS), max_size=60),
    raw=st.sampled_from([b"", b"\xff", b"\xe2\x82", b"\r"]),
    data=st.data(),
)
def test_csv_chunking_property(tokens: list[str], raw: bytes, data: st.DataObject) -> None:
    text = "".join(tokens).encode() + raw + "".join(tokens[:5]).encode()
    options: dict[str, object] = {"sniff_bytes": 24, "line_bytes_max": 32}
    whole = parse(CsvParser(**options), text)  # type: ignore[arg-type]
    cuts = data.draw(split_points(len(text)))
    assert parse(CsvParser(**options), text, cuts) == whole  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(tokens=st.lists(st.sampled_from(CSV_TOKENS[:-1]), max_size=80))
def test_csv_framing_agrees_with_the_csv_module(tokens: list[str]) -> None:
    text = "".join(tokens)
    expected = [row for row in csv.reader(io.StringIO(text, newline="\n")) if row]
    parser = CsvParser(delimiter=",", columns=("c",), line_bytes_max=10_000)
    items = parse(parser, text.encode())
    assume(not any(r == "unterminated quoted field" for _, r in bad(items)))
    got = [i.values if isinstance(i, RawRecord) else None for i in items]
    assert len(got) == len(expected)
    for values, row in zip(got, expected, strict=True):
        assert values is None if len(row) != 1 else values == tuple(row)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(json_values, max_size=6),
    wrapper=st.booleans(),
    indent=st.booleans(),
    data=st.data(),
)
def test_json_chunking_property(
    records: list[object], wrapper: bool, indent: bool, data: st.DataObject
) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    # (a wrapper needs a record array that starts with an object to be one)
    doc: object = {"records": [{"r": r} for r in records]} if wrapper and records else records
    text = orjson.dumps(doc, option=option)
    whole = parse_fmt("json", text)
    assert len(whole) == len(records)
    cuts = data.draw(split_points(len(text)))
    assert parse_fmt("json", text, cuts) == whole
    ndjson = b"".join(orjson.dumps(r) + b"\n" for r in records)
    lines = parse_fmt("ndjson", ndjson)
    assert parse_fmt("ndjson", ndjson, data.draw(split_points(len(ndjson)))) == lines


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(st.text(alphabet="ab:;|\t é\r", max_size=12), max_size=10),
    data=st.data(),
)
def test_combo_chunking_property(lines: list[str], data: st.DataObject) -> None:
    text = "\n".join(lines).encode()
    whole = parse_fmt("combo", text, line_bytes_max=8)
    assert parse_fmt("combo", text, data.draw(split_points(len(text))), line_bytes_max=8) == whole


# --- memory and speed --------------------------------------------------------------------


def _generated_csv(total_bytes: int, chunk_bytes: int) -> Iterator[bytes]:
    """~total_bytes of CSV, produced on the fly from one reusable chunk of whole lines."""
    row = b"user%07d@example.com,%s,10.1.2.3,host.example.org,+15550001111,\"Some, Name\"\n"
    chunk = b"".join(row % (i, b"p" * 900) for i in range(chunk_bytes // 1000))
    yield b"email,password,ip,domain,phone,name\n"
    for _ in range(total_bytes // len(chunk)):
        yield chunk


def test_constant_memory_on_a_200_mb_stream() -> None:
    chunks = _generated_csv(200 * MIB, MIB)
    parser = make_parser("csv")
    records = 0
    tracemalloc.start()
    try:
        for chunk in chunks:
            records += len(parser.feed(chunk))
        records += len(parser.close())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records > 200_000
    assert peak < 16 * MIB, peak


def test_runaway_input_keeps_memory_bounded() -> None:
    parser = make_parser("csv", line_bytes_max=MIB, header=True)
    tracemalloc.start()
    try:
        items = parser.feed(b"a,b\n1,2\n")
        items += parser.feed(b'3,"')
        for _ in range(64):
            items += parser.feed(b"no quote here, no newline either " * 2048)
        items += parser.feed(b"\n4,5\n")
        items += parser.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bad(items) == [(3, f"record longer than {MIB} bytes")]
    assert good(items) == [(2, {"a": "1", "b": "2"}), (4, {"a": "4", "b": "5"})]
    assert peak < 4 * MIB, peak


def _rate(fmt: str, data: bytes, expected: int) -> float:
    parser = make_parser(fmt)
    started = time.process_time()
    count = 0
    for i in range(0, len(data), 256 * 1024):
        count += len(parser.feed(data[i : i + 256 * 1024]))
    count += len(parser.close())
    elapsed = time.process_time() - started
    assert count == expected
    return count / elapsed if elapsed else float("inf")


def test_speed_is_measured() -> None:
    rows = 200_000
    csv_data = b"email,password,ip,domain,phone,name\n" + b"".join(
        b"u%d@example.com,pw%d,10.0.%d.%d,h%d.example.org,+1555%07d,Name %d\n"
        % (i, i, i % 256, i % 200, i, i, i)
        for i in range(rows)
    )
    nd = b"".join(
        b'{"email":"u%d@example.com","password":"pw%d","ip":"10.0.0.%d","n":%d}\n'
        % (i, i, i % 256, i)
        for i in range(rows // 2)
    )
    rates = {
        "csv": _rate("csv", csv_data, rows),
        "ndjson": _rate("ndjson", nd, rows // 2),
        "json": _rate("json", b"[" + nd.replace(b"}\n{", b"},{").rstrip() + b"]", rows // 2),
    }
    print("\nparser records/s (CPU time):", {k: f"{v:,.0f}" for k, v in rates.items()})


# Field text near the plain-block path's edge: delimiters, spaces, separators that
# str.splitlines (but not csv) would break lines at, non-ASCII; and, injected in one row,
# what sends a block to the csv module or makes a bad record (a quote, a carriage return,
# a NUL, a missing field).
_PLAIN_FIELD = st.text(alphabet="ab ;\t\u00e9\x0b\x1c\x85\u2028", max_size=6)
_ODD_ROW = st.sampled_from([['"', "a", "b"], ['a"b', "", ""], ["\r", "x", "y"], ["\x00", "", ""],
                            ["only"], [""], ["a", "b", "c", "d"]])


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(_PLAIN_FIELD, min_size=3, max_size=3), max_size=40),
       odd=st.none() | st.tuples(st.integers(min_value=0, max_value=40), _ODD_ROW),
       delimiter=st.sampled_from([",", "\t", "|"]),
       cuts=st.lists(st.integers(min_value=1, max_value=600), max_size=4))
def test_plain_blocks_are_split_as_the_csv_module_reads_them(
        rows: list[list[str]], odd: tuple[int, list[str]] | None, delimiter: str,
        cuts: list[int]) -> None:
    rows = [[field.replace(delimiter, "") for field in row] for row in rows]
    if odd is not None:
        rows.insert(min(odd[0], len(rows)), odd[1])
    lines = [delimiter.join(["h1", "h2", "h3"]), *(delimiter.join(row) for row in rows)]
    data = ("\n".join(lines) + "\n").encode()
    cuts = sorted({c for c in cuts if c < len(data)})
    split = parse_fmt("csv", data, cuts, delimiter=delimiter, header=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CsvParser, "_split_lines", lambda self, text, first: None)
        read = parse_fmt("csv", data, cuts, delimiter=delimiter, header=True)
    assert good(split) == good(read)
    assert bad(split) == bad(read)
