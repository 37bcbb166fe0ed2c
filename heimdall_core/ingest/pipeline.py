"""The one ingest pipeline: bytes in, canonical protected records, events in the log.

    chunks -> AutoDecompressor -> parser (push) -> mapping -> canonicalize -> PII policy
           -> records.ingested events (batched) -> the site's signed feed (fsync'd)

:class:`DumpIngestor` is push-based (``feed(chunk)`` / ``finish()``), so the CLI (file
chunks), the HTTP API (request body chunks) and worker processes (byte ranges of a
file) all drive the very same object. It holds at most one event batch of records in
memory, whatever the input size.

Bad input never aborts a dump: a bad line or record is counted and written to the
quarantine file with its position and a reason that never quotes the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import operator
import os
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from heimdall_core import kinds
from heimdall_core.errors import IngestError
from heimdall_core.events import CanonicalBody, encode_body
from heimdall_core.ingest.mapping import (
    AUTO,
    MAPPING_KINDS,
    PER_VALUE_KINDS,
    UNDETECTED_KIND,
    MappingError,
    infer_mapping,
    is_known_name,
    merge_mapping,
    per_value_canonicalizer,
)
from heimdall_core.ingest.parsers import (
    JSON_SCALAR_COLUMN,
    BadRecord,
    Parser,
    RawRecord,
    make_parser,
)
from heimdall_core.ingest.sources import AutoDecompressor, sniff_format
from heimdall_core.normalize import Canonical, NormalizeOptions, Result, canonicalizer_for
from heimdall_core.pii.policy import Action, PiiPolicy
from heimdall_core.pii.protect import BatchSealer, ColumnFields, FieldIn, Protector

log = logging.getLogger("heimdall.ingest")

RECORDS_PER_EVENT = 256
EVENTS_PER_APPEND = 64  # 16384 records per key-store transaction and log append: each transaction
# rewrites the key store's index pages it touches, so a bigger one costs less per new subject
# (measured at 1M subjects: ~6 us at 8192, ~4 us at 16384); 32768 would pass 250 MB of RSS.
SNIFF_BYTES = 64 * 1024
SAMPLE_RECORDS = 200
QUARANTINE_REASON_CHARS_MAX = 200
PLANS_CACHED_MAX = 1024
MEMO_VALUES_MAX = 16_384  # clear fields remembered per column (~250 bytes each: ~4 MiB)
CLEAR_HEADS_MAX = 4_096  # packed heads of clear fields (column, kind, attributes) remembered
COLUMNWISE_RECORDS_MIN = 64  # fewer records alike are not worth the column pass's set-up
BATCHES_ASIDE_MAX = 2  # full batches held while another process holds the key store (~20 MB each)
KEYS_BUSY_RECHECK_RECORDS = 1024  # records packed between two looks at a busy key store
LATE_COLUMNS_NAMED_MAX = 4096  # JSON keys new after the mapping, each given its own name


class _ClearMemo(dict[str, bytes]):
    """Raw value -> the clear field it becomes, packed, for one column: dumps repeat
    domains, IPs and hashes, and a hit skips canonicalizing and packing the field.
    A column whose values rarely repeat stops being remembered (see ``_memo_full``)."""

    __slots__ = ("hits",)

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0


# One planned column: (index in the record, column name, mapped kind, its canonicalizer,
# the policy's action for a value of that kind, its memo of clear fields or None).
_Step = tuple[int, str, str, Callable[[str], Result], Action, "_ClearMemo | None"]


# Parts of a parsed record and of a canonical result, for map() over a column.
_POSITION = operator.itemgetter(0)
_COLUMNS = operator.itemgetter(1)
_VALUES = operator.itemgetter(2)
_KIND = operator.itemgetter(0)
_VALUE = operator.itemgetter(1)
_ATTRS = operator.itemgetter(3)

# BatchSealer.pack_into of the current batch: appends a record's protected fields, their count.
_PackInto = Callable[[list[bytes], Sequence[FieldIn]], int]

# Appends event bodies to one of this site's feeds; returns once they are durable.
Appender = Callable[[Sequence[bytes]], None]


@dataclass(frozen=True, slots=True)
class IngestOptions:
    source: str
    fmt: str | None = None  # forced: taken as it is (the input must still be text)
    fmt_hint: str | None = None  # claimed by the sender: checked against the input
    mapping: Mapping[str, str] = field(default_factory=dict)  # overrides: column -> kind
    delimiter: str | None = None
    header: bool | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    line_bytes_max: int = 1 << 20
    records_per_event: int = RECORDS_PER_EVENT
    normalize: NormalizeOptions = field(default_factory=NormalizeOptions)


@dataclass(slots=True)
class PartResult:
    part: int
    records: int = 0  # records written (or already written before a resume)
    quarantined: int = 0
    rejected_fields: int = 0
    undetected_values: int = 0  # values of an ``auto`` column kept as ``other`` (see mapping.AUTO)
    events: int = 0


@dataclass(slots=True)
class Progress:
    bytes_in: int = 0
    records: int = 0
    quarantined: int = 0


class Quarantine:
    """Bad records of one dump part: JSON lines with position and a PII-safe reason."""

    def __init__(self, path: Path, dump_hex: str, source: str) -> None:
        self.path = path
        self._dump = dump_hex
        self._source = source
        self._handle: Any = None

    def add(self, position: int, reason: str, column: str | None = None) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            os.chmod(self.path, 0o600)
        entry: dict[str, Any] = {"dump": self._dump, "source": self._source, "position": position,
                                 "reason": reason[:QUARANTINE_REASON_CHARS_MAX]}
        if column is not None:
            entry["column"] = column
        self._handle.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        handle, self._handle = self._handle, None  # once, even if the flush fails (a full disk)
        if handle is not None:
            try:
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                handle.close()


class InputCut(IngestError):
    """The input stopped before its end (an upload aborted or over its limit): the
    records read so far are kept (:meth:`DumpIngestor.keep_read`), the dump incomplete."""


class DumpIngestor:
    """One part of one dump, driven by pushing raw bytes. Not thread-safe."""

    def __init__(
        self,
        *,
        dump: bytes,
        part: int,
        options: IngestOptions,
        protector: Protector,
        policy: PiiPolicy,
        append: Appender,
        quarantine: Quarantine,
        columns: Sequence[str] | None = None,
        fmt: str | None = None,
        mapping: Mapping[str, str] | None = None,
        skip_through: int = 0,
        first_line: int = 1,
        parts: int = 1,
        on_progress: Callable[[Progress], None] | None = None,
        keys_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.dump = dump
        self.part = part
        self.options = options
        self._protector = protector
        self._policy = policy
        self._append = append
        self._quarantine = quarantine
        self._fixed_columns = tuple(columns) if columns is not None else None
        self._fmt = fmt or options.fmt
        self._mapping_fixed = dict(mapping) if mapping is not None else None
        self._declared = declared_columns(options, policy)
        self._skip_through = skip_through
        self._first_line = first_line
        # How many parts the dump was cut into: one of several reads a stretch of the file.
        self._parts = parts
        self._on_progress = on_progress
        self.result = PartResult(part)
        self.progress = Progress()
        self.sha256 = hashlib.sha256()
        self.bytes_in = 0
        self._decompressor = AutoDecompressor()
        self._parser: Parser | None = None
        self._head = b""
        self._pending: list[RawRecord | BadRecord] = []  # held until the mapping is known
        self.mapping: dict[str, str] | None = None
        self.columns: tuple[str, ...] = ()
        self._public_names: dict[str, str] = {}  # raw column -> public name (see _public)
        self._planned_names = 0  # of them, those of the dump-wide column list
        self._plans: dict[tuple[str, ...], list[_Step]] = {}
        self._clear_heads: dict[tuple[str, str, tuple[tuple[str, str], ...]], bytes] = {}
        # One packer per ingestor, reused: msgpack.packb builds a new one per call, which
        # cost more than packing a short value (a packer is not thread-safe; neither is this).
        self._pack = msgpack.Packer().pack
        self._canonicalizers: dict[str, Callable[[str], Result]] = {}
        self._actions: dict[tuple[str, str], Action] = {}
        # The held records, packed: every record's pieces in order (its header, then its
        # fields; sealed ones get their bytes when the batch is sealed), and where each
        # record starts in them.
        self._pieces: list[bytes] = []
        self._starts: list[int] = []
        self._sealer: BatchSealer = protector.batch(options.source)
        # Full batches set aside while ``keys_busy`` says another process holds the key
        # store's write lock (see ``_batch_full``), and when to look at the held records.
        self._keys_busy = keys_busy
        self._aside: list[tuple[list[bytes], list[int], BatchSealer]] = []
        self._batch_max = options.records_per_event * EVENTS_PER_APPEND
        self._flush_at = self._batch_max
        self._records_head = records_body_head(dump, part)
        self._appender: ThreadPoolExecutor | None = None
        self._in_flight: Future[None] | None = None

    # ---------------------------------------------------------------- pushing bytes
    @property
    def format(self) -> str | None:
        return self._fmt

    @property
    def compression(self) -> str:
        return self._decompressor.compression or "none"

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.sha256.update(chunk)
        self.bytes_in += len(chunk)
        self.progress.bytes_in = self.bytes_in
        # Piece by piece: a small compressed chunk can expand a thousandfold.
        for data in self._decompressor.feed_pieces(chunk):
            if data:
                self._parse(data)

    def finish(self) -> PartResult:
        """Flush everything; returns after the last events are durable."""
        tail = self._decompressor.close()
        if tail:
            self._parse(tail)
        if self._parser is None:
            if not self._head:
                raise IngestError("the input is empty: no bytes to ingest")
            self._start_parser()
        assert self._parser is not None
        try:
            self._take(self._parser.close())
            malformed = self._parser.malformed_input()
            if malformed is not None:
                # Not one record: nothing is logged, so the dump is not taken as done
                # and a retry with the right format or encoding needs no --force.
                raise malformed
            if self.mapping is None:
                self._decide_mapping()
            self._flush_records(force=True)
        finally:
            self._quarantine.close()
        return self.result

    def keep_read(self) -> None:
        """The input was cut off: make the whole records parsed so far durable, as
        ``finish`` does, but without ending the input (the record the cut fell in is not
        one of them). No dump.finished follows, so the dump stays incomplete."""
        try:
            if self._parser is None and self._head:
                self._start_parser()
            if self._parser is not None:
                self._take(self._parser.cut())
                if self.mapping is None:
                    self._decide_mapping()
            self._flush_records(force=True)
        except BaseException:
            self.abort()
            raise
        finally:
            self._quarantine.close()

    def _parse(self, data: bytes) -> None:
        if self._parser is None:
            self._head += data
            if len(self._head) >= SNIFF_BYTES:
                self._start_parser()  # sniffs the head, then parses it
            return
        self._take(self._parser.feed(data))

    def _start_parser(self) -> None:
        head = self._head
        fmt = self._fmt
        # A planned part of a file (columns and format given) was checked with its head.
        if fmt is None or self._fixed_columns is None:
            fmt = self._fmt = sniff_format(head, forced=fmt, hint=self.options.fmt_hint)
        header = self.options.header
        if self._fixed_columns is not None:
            header = False
        self._parser = make_parser(fmt, delimiter=self.options.delimiter, header=header,
                                   line_bytes_max=self.options.line_bytes_max,
                                   columns=self._fixed_columns, first_line=self._first_line,
                                   declared=self._declared, whole_input=self._parts == 1)
        if head:
            self._head = b""
            self._take(self._parser.feed(head))

    # ---------------------------------------------------------------- records
    def _take(self, items: list[RawRecord | BadRecord]) -> None:
        if not items:
            return
        if self.mapping is None:
            self._pending.extend(items)
            if sum(1 for item in self._pending if isinstance(item, RawRecord)) < SAMPLE_RECORDS:
                return
            self._decide_mapping()
            items, self._pending = self._pending, []
        self._process(items)

    def _decide_mapping(self) -> None:
        assert self._parser is not None
        # A planned part numbers columns by the dump-wide list the parent planned with:
        # a JSON part's own parser only knows the keys of its stretch of the file.
        columns = self._fixed_columns
        if columns is None:
            columns = tuple(self._parser.columns)
        if self._mapping_fixed is not None:
            mapping = dict(self._mapping_fixed)
        else:
            overrides = mapped_columns(self.options.mapping, columns, self._declared)
            mapping = merge_mapping(infer_from_sample(columns, self._pending), overrides)
        self.mapping = mapping
        self.columns = columns
        self._public_names = public_names(columns, mapping, self._declared)
        self._planned_names = len(self._public_names)
        self._plans.clear()
        pending, self._pending = self._pending, []
        self._process(pending)

    def _make_plan(self, columns: Sequence[str], mapping: Mapping[str, str]) -> list[_Step]:
        """One step per column the policy does not drop (see ``_Step``)."""
        plan = []
        normalize = self.options.normalize
        for index, column in enumerate(columns):
            kind = mapping.get(column, "other")
            if kind not in MAPPING_KINDS:
                raise IngestError(f"column {self._public(column)!r}: unknown kind {kind!r}")
            if self._dropped(column, kind):
                continue
            canon = self._canonicalizers.get(kind)
            if canon is None:
                make = per_value_canonicalizer if kind in PER_VALUE_KINDS else canonicalizer_for
                canon = self._canonicalizers[kind] = make(kind, normalize)
            action = self._action(column, kind)
            # A per-value column's step action is not its values' (each has its own kind).
            memo = _ClearMemo() if action is Action.CLEAR and kind not in PER_VALUE_KINDS else None
            plan.append((index, self._public(column), kind, canon, action, memo))
        return plan

    def _dropped(self, column: str, kind: str) -> bool:
        """Whether the policy drops every value of this column. A per-value kind's values
        each have their own kind, so only a column override drops them all; the record
        path drops the values whose own kind the policy drops."""
        if kind in PER_VALUE_KINDS:
            return self._policy.overrides.get(self.options.source, {}).get(column) is Action.DROP
        return self._policy.action(self.options.source, column, kind) is Action.DROP

    def _public(self, column: str) -> str:
        """The public name of ``column`` in this whole dump, whatever its place in a record.

        A key first seen after the mapping was decided (JSON records may each have their
        own) takes the next free place. The parts of a dump cannot see each other's new
        keys, so part p of P takes places p, p + P, p + 2P... after the planned columns:
        two keys never share a name (the same new key in two parts gets two). Past
        ``LATE_COLUMNS_NAMED_MAX`` new keys (a dump keyed by account has one per record)
        the rest share the next place, so that memory stays bounded."""
        name = self._public_names.get(column)
        if name is None:
            late = len(self._public_names) - self._planned_names
            index = self._planned_names + self.part + late * self._parts
            name = public_column(column, index, self._declared)
            if late < LATE_COLUMNS_NAMED_MAX:
                self._public_names[column] = name
        return name

    @property
    def public_columns(self) -> list[str]:
        return [self._public(c) for c in self.columns]

    @property
    def public_mapping(self) -> dict[str, str]:
        return {self._public(c): k for c, k in (self.mapping or {}).items()}

    def _action(self, column: str, kind: str) -> Action:
        if len(self._actions) >= PLANS_CACHED_MAX:
            self._actions.clear()
        action = self._actions[(column, kind)] = self._policy.action(self.options.source, column, kind)
        return action

    def _plan_for(self, columns: tuple[str, ...]) -> list[_Step]:
        """The plan of a column tuple; parsers share one tuple object per layout, so this
        is one dict lookup per record (JSON records may each have their own keys)."""
        plan = self._plans.get(columns)
        if plan is None:
            if len(self._plans) >= PLANS_CACHED_MAX:
                self._plans.clear()
            assert self.mapping is not None
            plan = self._plans[columns] = self._make_plan(columns, self.mapping)
        return plan

    def _process(self, items: list[RawRecord | BadRecord]) -> None:
        if not self._process_columns(items):
            self._process_records(items)
        if self._on_progress is not None:
            self._on_progress(self.progress)

    def _process_records(self, items: list[RawRecord | BadRecord]) -> None:
        """Any records, one by one: bad ones, rejected or empty fields, mixed columns."""
        # The hot loop of ingest: names are bound to locals and counters kept in locals
        # (written back in ``finally``), since attribute lookups cost per record.
        skip = self._skip_through
        actions = self._actions
        pieces = self._pieces
        starts = self._starts
        pack_protected: _PackInto = self._sealer.pack_into
        pack = self._pack
        flush_at = self._flush_at
        clear_action = Action.CLEAR
        clear_heads = self._clear_heads
        drop_action = Action.DROP
        canonical_type = Canonical
        bad_type = BadRecord
        last_columns: tuple[str, ...] | None = None
        plan: list[_Step] = []
        records = quarantined = rejected = undetected = 0
        try:
            for item in items:
                if type(item) is bad_type:
                    quarantined += 1
                    # Always written: the quarantine file is rewritten whole on a resume.
                    self._quarantine.add(item.position, item.reason)
                    continue
                assert type(item) is RawRecord
                if item.columns is not last_columns:
                    last_columns = item.columns
                    plan = self._plan_for(item.columns)
                values = item.values
                width = len(values)
                clear: list[bytes] = []
                sealed: list[tuple[str, str, str]] = []
                for index, column, kind, canon, kind_action, memo in plan:
                    if index >= width:
                        continue
                    raw = values[index]
                    if not raw:
                        continue
                    if memo is not None:
                        field = memo.get(raw)
                        if field is not None:
                            memo.hits += 1
                            clear.append(field)
                            continue
                    result = canon(raw)
                    if type(result) is not canonical_type:
                        rejected += 1
                        self._quarantine.add(item.position, f"{kind} value rejected: "
                                             f"{getattr(result, 'reason', 'invalid')}", column)
                        continue
                    # A "hash" column may hold a crypt password hash; a per-value column's
                    # values each have their own kind.
                    final_kind = result.kind
                    action: Action | None = kind_action
                    if final_kind != kind:
                        if final_kind == UNDETECTED_KIND and kind == AUTO:
                            undetected += 1
                        action = actions.get((column, final_kind))
                        if action is None:
                            action = self._action(column, final_kind)
                    if action is clear_action:
                        # The packed field up to its value, which comes last (see _clear_head).
                        head_key = (column, final_kind, result.attrs)
                        head = clear_heads.get(head_key)
                        if head is None:
                            head = self._clear_head(head_key)
                        field = head + pack(result.value)
                        clear.append(field)
                        if memo is not None and final_kind == kind:
                            memo[raw] = field
                            if len(memo) >= MEMO_VALUES_MAX:
                                self._memo_full(memo)
                    elif action is not drop_action:
                        sealed.append((column, final_kind, result.value))
                if not clear and not sealed:
                    quarantined += 1
                    self._quarantine.add(item.position, "no usable field in the record")
                    continue
                records += 1
                if item.position <= skip:
                    continue  # written before an interruption; resuming after it
                # [position, [protector fields..., clear fields...]], packed piece by piece.
                start = len(pieces)
                starts.append(start)
                pieces.append(b"")  # the header, once the number of fields is known
                count = pack_protected(pieces, sealed) if sealed else 0
                pieces += clear
                count += len(clear)
                pieces[start] = _RECORD_HEAD + pack(item.position) + (
                    _FIXARRAY_HEADERS[count] if count <= _FIXARRAY_MAX else _array_header(count))
                if len(starts) >= flush_at:
                    pieces, starts, pack_protected, flush_at = self._batch_full_rebound()
        finally:
            self._count(records, quarantined, rejected, undetected)

    def _process_columns(self, items: list[RawRecord | BadRecord]) -> bool:
        """The records of ``items`` column by column, if they are all alike: good records
        of one layout, every planned field present and accepted as its column's kind,
        no column of a per-value kind (each value has its own), none written before a
        resume. False, with nothing written, for any other input:
        :meth:`_process_records` then takes it, and writes exactly the same records.

        A column's values are canonicalized and packed by ``map`` (iterated in C), its
        protected fields prepared column by column (``BatchSealer.prepare_columns``) and
        the records assembled by zip: the record loop's per-field unpacking, tests and
        lookups cost as much as the fields' canonicalizers (measured: ~2.4 us less per
        record of the benchmark's six columns)."""
        if len(items) < COLUMNWISE_RECORDS_MIN or len(set(map(type, items))) != 1 \
                or type(items[0]) is not RawRecord:
            return False
        records = typing.cast(list[RawRecord], items)
        columns = records[0].columns
        positions = list(map(_POSITION, records))
        rows = list(map(_VALUES, records))
        if len(set(map(id, map(_COLUMNS, records)))) != 1 or min(positions) <= self._skip_through \
                or set(map(len, rows)) != {len(columns)}:
            return False
        plan = self._plan_for(columns)
        if not plan or any(step[2] in PER_VALUE_KINDS for step in plan):
            return False
        raws = [list(map(operator.itemgetter(step[0]), rows)) for step in plan]
        if any("" in values for values in raws):
            return False
        protected: list[tuple[str, str, list[str]]] = []
        clear: list[list[bytes]] = []
        # Over a copy: a memo that fills up may take its step out of the plan meanwhile.
        for step, values in zip(list(plan), raws, strict=True):
            if step[4] is Action.CLEAR:
                fields = self._clear_column(step, values)
                if fields is None:
                    return False
                clear.append(fields)
            else:
                results = self._canonical_column(step, values)
                if results is None:
                    return False
                protected.append((step[1], step[2], list(map(_VALUE, results))))
        prepared = self._sealer.prepare_columns(protected) if protected else None
        if prepared is None and protected:
            sealed = [list(zip(itertools.repeat(column), itertools.repeat(kind), values))
                      for column, kind, values in protected]
            self._assemble(positions, sealed, clear)
        else:
            self._assemble_columns(positions, prepared, clear)
        return True

    def _assemble_columns(self, positions: list[int], protected: ColumnFields | None,
                          clear: list[list[bytes]]) -> None:
        """Pack each record ([position, [protector fields..., clear fields...]]) from its
        columns' fields, with no Python loop per record: every record has the same number
        of fields, so each is its header, a placeholder per protected field (see
        ``BatchSealer.place_columns``) and its clear fields, interleaved by zip."""
        protected_count = len(protected.names) if protected is not None else 0
        width = 1 + protected_count + len(clear)
        count = width - 1
        tail = _FIXARRAY_HEADERS[count] if count <= _FIXARRAY_MAX else _array_header(count)
        headers = list(map(b"".join, zip(itertools.repeat(_RECORD_HEAD), map(self._pack, positions),
                                         itertools.repeat(tail))))
        placeholders = [itertools.repeat(b"")] * protected_count
        first = 0
        while first < len(positions):
            last = min(len(positions), first + self._flush_at - len(self._starts))
            pieces = self._pieces
            base = len(pieces)
            # Not strict: the placeholders repeat endlessly; the headers give the length.
            pieces += itertools.chain.from_iterable(zip(
                headers[first:last], *placeholders, *(column[first:last] for column in clear),
                strict=False))
            self._starts += range(base, len(pieces), width)
            if protected is not None:
                self._sealer.place_columns(protected, first, last, pieces,
                                           range(base + 1, len(pieces), width))
            self._count(last - first, 0, 0)
            first = last
            if len(self._starts) >= self._flush_at:
                self._batch_full()

    def _canonical_column(self, step: _Step, values: list[str]) -> list[Canonical] | None:
        """The canonical results of one column's values, or None unless every one is
        accepted as the column's own kind (a record path case)."""
        results = list(map(step[3], values))
        if set(map(type, results)) != {Canonical}:
            return None
        canonical = typing.cast(list[Canonical], results)
        return canonical if set(map(_KIND, canonical)) == {step[2]} else None

    def _clear_column(self, step: _Step, values: list[str]) -> list[bytes] | None:
        """One clear column's packed fields (see ``_clear_head``), the memo of the column
        consulted and filled as the record path does; None as ``_canonical_column``."""
        memo = step[5]
        if memo is None:
            results = self._canonical_column(step, values)
            if results is None:
                return None
            heads = {attrs: self._clear_head((step[1], step[2], attrs))
                     for attrs in set(map(_ATTRS, results))}
            pack = self._pack
            if len(heads) == 1:
                (head,) = heads.values()
                return list(map(head.__add__, map(pack, map(_VALUE, results))))
            return [heads[result.attrs] + pack(result.value) for result in results]
        fields = list(map(memo.get, values))
        missing = [index for index, field in enumerate(fields) if field is None]
        memo.hits += len(fields) - len(missing)
        for index in missing:
            field = self._remembered_field(step, memo, values[index])
            if field is None:
                return None
            fields[index] = field
        return typing.cast(list[bytes], fields)

    def _remembered_field(self, step: _Step, memo: _ClearMemo, raw: str) -> bytes | None:
        """The packed clear field of ``raw`` from the memo, or canonicalized and
        remembered; None if it is rejected or of another kind."""
        known = memo.get(raw)
        if known is not None:
            memo.hits += 1
            return known
        result = step[3](raw)
        if type(result) is not Canonical or result.kind != step[2]:
            return None
        head = self._clear_heads.get((step[1], step[2], result.attrs))
        if head is None:
            head = self._clear_head((step[1], step[2], result.attrs))
        field: bytes = head + self._pack(result.value)
        memo[raw] = field
        if len(memo) >= MEMO_VALUES_MAX:
            self._memo_full(memo)
        return field

    def _assemble(self, positions: list[int], sealed: list[list[FieldIn]],
                  clear: list[list[bytes]]) -> None:
        """Pack each record from its columns' fields: [position, [protector fields...,
        clear fields...]], as ``_process_records`` does, its protected fields by
        ``BatchSealer.pack_into`` (for columns ``prepare_columns`` leaves to it)."""
        pieces, starts = self._pieces, self._starts
        pack_protected: _PackInto = self._sealer.pack_into
        pack = self._pack
        flush_at = self._flush_at
        clear_count = len(clear)
        no_fields: tuple[()] = ()
        done = 0
        try:
            # Not strict: a kind of field the records lack is an endless repeat of none.
            for position, protected, kept in zip(
                    positions, zip(*sealed, strict=True) if sealed else itertools.repeat(no_fields),
                    zip(*clear, strict=True) if clear else itertools.repeat(no_fields), strict=False):
                start = len(pieces)
                starts.append(start)
                pieces.append(b"")  # the header, once the number of fields is known
                count = pack_protected(pieces, protected) + clear_count if protected else clear_count
                pieces += kept
                pieces[start] = _RECORD_HEAD + pack(position) + (
                    _FIXARRAY_HEADERS[count] if count <= _FIXARRAY_MAX else _array_header(count))
                done += 1
                if len(starts) >= flush_at:
                    pieces, starts, pack_protected, flush_at = self._batch_full_rebound()
        finally:
            self._count(done, 0, 0)

    def _clear_head(self, key: tuple[str, str, tuple[tuple[str, str], ...]]) -> bytes:
        """The canonical msgpack of a clear field ``{a (attrs, if any), col, kind, v}``
        without its value: ``v`` sorts last, so the field is this head and the packed
        value. Remembered per (column, kind, attrs): an IP's version or a hash's algorithm
        repeat, and packing a dict per field cost more than the rest of the field."""
        column, kind, attrs = key
        fields: dict[str, object] = {"a": dict(attrs)} if attrs else {}
        fields.update(col=column, kind=kind, v="")
        packed: bytes = msgpack.packb(fields)
        assert packed.endswith(_EMPTY_STR)
        if len(self._clear_heads) >= CLEAR_HEADS_MAX:
            self._clear_heads.clear()
        head = self._clear_heads[key] = packed[: -len(_EMPTY_STR)]
        return head

    def _memo_full(self, memo: _ClearMemo) -> None:
        """A full memo starts over if at least as many values were found in it as were
        put in (values repeat); otherwise its column is no longer remembered."""
        keep = memo.hits >= len(memo)
        memo.clear()
        memo.hits = 0
        if keep:
            return
        for plan in self._plans.values():
            for position, step in enumerate(plan):
                if step[5] is memo:
                    plan[position] = (*step[:5], None)

    def _count(self, records: int, quarantined: int, rejected: int, undetected: int = 0) -> None:
        result, progress = self.result, self.progress
        result.records += records
        progress.records += records
        result.quarantined += quarantined
        progress.quarantined += quarantined
        result.rejected_fields += rejected
        result.undetected_values += undetected

    def _batch_full(self) -> None:
        """The held records reached ``_flush_at``. A full batch is set aside, and the
        batches set aside are flushed, unless another process holds the key store's
        write lock (``keys_busy``; another ingest worker folding the store's tail holds
        it ~0.3 s) and fewer than BATCHES_ASIDE_MAX are aside: then this one packs on
        instead of idling, and looks again KEYS_BUSY_RECHECK_RECORDS records later.
        Batches keep their size either way, so the events are the same."""
        if len(self._starts) >= self._batch_max:
            self._set_aside()
        if (self._keys_busy is not None and 0 < len(self._aside) < BATCHES_ASIDE_MAX
                and self._keys_busy()):
            self._flush_at = min(self._batch_max, len(self._starts) + KEYS_BUSY_RECHECK_RECORDS)
            return
        self._flush_records()

    def _batch_full_rebound(self) -> tuple[list[bytes], list[int], _PackInto, int]:
        """:meth:`_batch_full` for a packing loop that holds these as locals (the record
        loops do, to save attribute lookups per record): what to go on with after it."""
        self._batch_full()
        return self._pieces, self._starts, self._sealer.pack_into, self._flush_at

    def _set_aside(self) -> None:
        self._aside.append((self._pieces, self._starts, self._sealer))
        self._pieces, self._starts = [], []
        self._sealer = self._protector.batch(self.options.source)

    def _flush_records(self, force: bool = False) -> None:
        """Seal each batch set aside (one key-store transaction each, fsync'd before
        the events that use its keys), build their events and hand them to the appender
        thread, which appends each in one signed batch. At most one batch is in flight:
        while its log append waits for the disk, this thread goes on with the next
        records. With ``force``, the held records are a last batch, and this returns
        once everything is durable.

        Only the append runs in that thread: it spends its time in C and in fsync, which
        release the GIL, while protecting in it too was measured to cost more CPU in GIL
        hand-offs than it saved in waiting."""
        if force and self._starts:
            self._set_aside()
        self._flush_at = self._batch_max
        while self._aside:
            bodies = self._bodies_of(*self._aside.pop(0))
            self._wait_appended()  # the keys above are durable already
            if self._appender is None:
                self._appender = ThreadPoolExecutor(1, thread_name_prefix="ingest-append")
            self._in_flight = self._appender.submit(self._append, bodies)
        if force:
            self._wait_appended()
            self._stop_appender()

    def abort(self) -> None:
        """The dump stops here on a failure the caller raises (a full disk, a broken
        input, Ctrl-C): the append in flight ends, whatever its outcome, so that what the
        caller then reports as logged is all the log will hold, and no thread is left
        behind. Its own error, if any, gives way to the one being raised."""
        with contextlib.suppress(Exception):
            self._wait_appended()
        self._stop_appender()
        with contextlib.suppress(OSError):
            self._quarantine.close()

    def _wait_appended(self) -> None:
        """Wait for the append in flight; its error, if any, is raised here."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        try:
            in_flight.result()
        except BaseException:
            self._stop_appender()  # the dump has failed: no thread is left behind
            raise

    def _stop_appender(self) -> None:
        if self._appender is not None:
            self._appender.shutdown()
            self._appender = None

    def _bodies_of(self, pieces: list[bytes], starts: list[int], sealer: BatchSealer) -> list[bytes]:
        """Seal a batch's records (one key-store transaction, durable before this
        returns) and cut them into records.ingested bodies of ``records_per_event``."""
        sealer.seal()
        per_event = self.options.records_per_event
        starts.append(len(pieces))
        bodies: list[bytes] = []
        for first in range(0, len(starts) - 1, per_event):
            last = min(first + per_event, len(starts) - 1)
            bodies.append(records_body(self._records_head, last - first,
                                       pieces[starts[first]:starts[last]]))
            self.result.events += 1
        return bodies


_RECORD_HEAD = b"\x92"  # msgpack fixarray of 2: [position, fields]
_EMPTY_STR = msgpack.packb("")
_FIXARRAY_MAX = 15
# Table lookup on the per-record path (no call); msgpack's own packer for the rest.
_FIXARRAY_HEADERS = [bytes((0x90 | count,)) for count in range(_FIXARRAY_MAX + 1)]
_array_header = msgpack.Packer().pack_array_header
"""The canonical msgpack header of an array of ``count`` items."""


def records_body_head(dump: bytes, part: int) -> bytes:
    """The bytes of a records.ingested body of this dump part before its records array:
    the body of an empty one without its empty array (the last key, ``records``, sorts
    last, so the array ends the body)."""
    empty: bytes = encode_body(*kinds.RECORDS_INGESTED, {"dump": dump, "part": part, "records": []})
    assert empty.endswith(_array_header(0))
    return empty[:-1]


def records_body(head: bytes, count: int, records: Sequence[bytes]) -> CanonicalBody:
    """A records.ingested body from its head and its ``count`` records, already packed
    piece by piece in canonical form. The log skips its own re-check for
    ``CanonicalBody``; so that a construction bug can never be signed, the first body of
    each process and every ``SELF_CHECK_EVERY``-th after it are decoded and compared
    with the general canonical encoder's output."""
    global _PACKED
    body = b"".join((head, _array_header(count), *records))
    if _PACKED % SELF_CHECK_EVERY == 0:
        kind, version, payload = msgpack.unpackb(body, raw=False)
        if (kind, version) != kinds.RECORDS_INGESTED or len(payload["records"]) != count \
                or encode_body(kind, version, payload) != body:
            raise AssertionError("records.ingested body is not in canonical form")
    _PACKED += 1
    return CanonicalBody(body)


SELF_CHECK_EVERY = 64
_PACKED = 0


def declared_columns(options: IngestOptions, policy: PiiPolicy) -> frozenset[str]:
    """Column names the operator gave for this dump: in ``--map`` and in the PII
    policy's overrides for its source. The operator calls them columns, so they are
    not data; and the protector finds a column's override by the name it is written
    under, so an overridden column must keep its name."""
    return frozenset(options.mapping) | frozenset(policy.overrides.get(options.source, {}))


class UnmappedColumnError(MappingError, IngestError):
    """The operator's mapping names a column the input lacks: a usage error (exit 2) that
    the HTTP API, catching ingest errors, still answers with 400."""


def mapped_columns(mapping: Mapping[str, str], columns: Sequence[str],
                   declared: Collection[str]) -> dict[str, str]:
    """The operator's mapping (``--map``, ``--mapping-file``) keyed by the input's own
    column names. A key is a column's own name (as in the file's header), or else a name
    the dump shows for it (its public name, as the summary and errors list the columns:
    ``col2`` for an unnamed second cell). A key that is neither, one that is a column's
    own name and another column's shown name, or two keys naming one column, are
    refused: a usage error (MappingError, exit 2)."""
    if not columns:
        return dict(mapping)
    shown = {public_column(c, i, declared): c for i, c in enumerate(columns)}
    listed = ", ".join(shown)
    resolved: dict[str, str] = {}
    for key, kind in sorted(mapping.items()):
        column = key if key in columns else shown.get(key)
        if key in columns and shown.get(key, key) != key:
            raise UnmappedColumnError(f"the mapping's {key!r} names two columns: one is named "
                                      f"so in the input, another is shown so; its columns are "
                                      f"shown as: {listed}")
        if column is None:
            raise UnmappedColumnError(f"the mapping names column {key!r}, which the input does "
                                      f"not have; its columns are: {listed}")
        if column in resolved:
            raise UnmappedColumnError(f"the mapping names one column twice ({key!r} is a column "
                                      f"named already); its columns are: {listed}")
        resolved[column] = kind
    return resolved


def public_names(columns: Sequence[str], mapping: Mapping[str, str],
                 declared: Collection[str]) -> dict[str, str]:
    """Raw column name -> public name (``public_column``) for one dump, by its dump-wide
    column list: every record and every part writes a column under the same name, and
    two columns never share one. Mapped columns missing from the list (a JSON key of the
    sample past the parser's tracked keys) take the next places."""
    names = dict.fromkeys(columns)
    names.update(dict.fromkeys(c for c in mapping if c not in names))
    return {name: public_column(name, index, declared) for index, name in enumerate(names)}


def public_column(name: str, index: int, declared: Collection[str]) -> str:
    """The name under which a column is written to the log, errors and summaries.

    Column names are data in disguise when a headerless file's first row is taken for a
    header, or when a JSON dump is keyed by account (``{"jsmith": {"password": ...}}``
    gives ``jsmith.password``). Only a name of the column vocabulary (``is_known_name``),
    one the operator ``declared`` (``declared_columns``) or the parser's own name for the place
    (``col<N>``, ``value``) is kept; any other is replaced by ``col<N>``, N the column's
    1-based place in the dump's column list (see ``public_names``), never in one record.
    A ``col<N>`` name at another place than N is replaced too, even declared: it is the
    N-th column's public name, and two columns must never share one.
    """
    positional = f"col{index + 1}"
    if name in (positional, JSON_SCALAR_COLUMN):
        return name
    if (name in declared or is_known_name(name)) and not _names_a_place(name):
        return name
    return positional


def _names_a_place(name: str) -> bool:
    """Whether ``name`` is ``col<N>``, the public name of the dump's N-th column."""
    digits = name.removeprefix("col")
    return digits != name and digits.isascii() and digits.isdigit() and not digits.startswith("0")


def dump_started_body(*, dump: bytes, options: IngestOptions, name: str, fmt: str, compression: str,
                      sha256: str, size: int, columns: Sequence[str], mapping: Mapping[str, str],
                      parts: int, ranges: Sequence[tuple[int, int, int]] = ()) -> bytes:
    payload: dict[str, Any] = {
        "dump": dump, "source": options.source, "name": name, "format": fmt,
        "compression": compression, "sha256": sha256, "bytes": size, "columns": list(columns),
        "mapping": dict(mapping), "parts": parts, "meta": dict(options.meta)}
    if ranges:
        # The byte ranges of the parts, so that a resume cuts the file exactly the same way.
        payload["ranges"] = [list(r) for r in ranges]
    return encode_body(*kinds.DUMP_STARTED, payload)


def dump_finished_body(*, dump: bytes, records: int, quarantined: int, rejected_fields: int,
                       sha256: str, size: int, duplicate_of: bytes | None = None) -> bytes:
    payload: dict[str, Any] = {"dump": dump, "records": records, "quarantined": quarantined,
                               "rejected_fields": rejected_fields, "sha256": sha256, "bytes": size}
    if duplicate_of is not None:
        payload["duplicate_of"] = duplicate_of
    return encode_body(*kinds.DUMP_FINISHED, payload)


def infer_from_sample(columns: tuple[str, ...], items: Sequence[RawRecord | BadRecord]) -> dict[str, str]:
    """Infer kinds from a sample whose records may each have their own columns (JSON)."""
    records = [item for item in items if isinstance(item, RawRecord)]
    names = list(columns)
    seen = set(names)
    for record in records:
        for column in record.columns:
            if column not in seen:
                seen.add(column)
                names.append(column)
    position = {name: index for index, name in enumerate(names)}
    sample = []
    for record in records:
        row = [""] * len(names)
        for column, value in zip(record.columns, record.values, strict=False):
            row[position[column]] = value
        sample.append(row)
    return infer_mapping(names, sample)
