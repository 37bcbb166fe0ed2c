"""Protect a record's personal fields before its event is written (pure given keys).

The ingest pipeline hands over records as sequences of ``(column, kind,
canonical_value)``; :class:`Protector` decides each record's subject, seals,
fingerprints, keeps or drops every field per the policy, and returns small dicts
ready for a msgpack event payload (or, for ingest, :class:`BatchSealer` packs them
directly). The shape of a protected field (docs/pii.md)::

    {"col": str, "kind": str, "v": str}                       clear
    {"col": str, "kind": str, "sub": 16 B, "ct": bytes}       encrypt
    {"col": str, "kind": str, "bi": 16 B}                     blind_index
    {"col": str, "kind": str, "sub": 16 B, "ct": B, "bi": 16 B}  encrypt+blind_index

A dropped field is left out. A field whose subject was already shredded when it
was ingested has ``sub`` but no ``ct``: its value was never stored.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

import msgpack
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from heimdall_core.errors import PiiError, ShreddedError
from heimdall_core.pii.blind_index import (
    BLIND_INDEX_BYTES,
    SUBJECT_ID_BYTES,
    SUBJECT_LABEL,
    IndexKeys,
    subject_id,
)
from heimdall_core.pii.envelope import (
    FIELD_PLAINTEXT_BYTES_MAX,
    FORMAT_V1,
    NONCE_BYTES,
    OVERHEAD_BYTES,
    RandomBytes,
    open_field,
)
from heimdall_core.pii.policy import SUBJECT_KINDS, Action, PiiPolicy

RECORDS_PER_BATCH_MAX = 65_536
"""Most records protected in one call (bounds the memory of one batch)."""

FIELDS_PER_RECORD_MAX = 1_024
"""Most fields in one record (a wider record is a parser bug or a hostile file)."""

ACTION_CACHE_ENTRIES_MAX = 16_384
"""Most (source, column, kind) decisions remembered before the cache is reset."""

FieldIn = tuple[str, str, str]
"""One input field: (column, kind, canonical value)."""

ProtectedField = dict[str, str | bytes]
"""One output field, shaped for a msgpack payload (see the module doc)."""

_SUBJECT_RANK: Mapping[str, int] = {kind: rank for rank, kind in enumerate(SUBJECT_KINDS)}
_NO_RANK = len(SUBJECT_KINDS)

# What an action means in the inner loop, as bit flags (cheaper than enum properties).
_KEEP = 1
_SEAL = 2
_INDEX = 4
_FLAGS: Mapping[Action, int] = {
    Action.CLEAR: _KEEP,
    Action.ENCRYPT: _SEAL,
    Action.BLIND_INDEX: _INDEX,
    Action.ENCRYPT_BLIND_INDEX: _SEAL | _INDEX,
    Action.DROP: 0,
}
_FORMAT = bytes((FORMAT_V1,))


class DataKeySource(Protocol):
    """Batch get-or-create of subjects' data keys (``None`` for a shredded subject)."""

    def data_keys(self, subjects: Sequence[bytes]) -> Mapping[bytes, bytes | None]: ...


class DataKeyReader(Protocol):
    """Look up one subject's data key without creating it (``None`` if shredded)."""

    def data_key(self, subject: bytes) -> bytes | None: ...


class ProtectedRecord(NamedTuple):
    """A record after the policy: its subject (if any field was sealed) and its fields.

    A named tuple rather than a frozen dataclass: one is built per record on the
    ingest hot path, and a tuple is built three times faster.
    """

    subject: bytes | None
    fields: tuple[ProtectedField, ...]


class Protector:
    """Applies a :class:`PiiPolicy` to batches of records for one site's keys."""

    __slots__ = ("_codes", "_keys", "_policy", "_random_bytes", "_source")

    def __init__(
        self,
        policy: PiiPolicy,
        index_keys: IndexKeys,
        data_keys: DataKeySource,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._policy = policy
        self._keys = index_keys
        self._source = data_keys
        self._random_bytes = random_bytes
        # source -> (column, kind) -> its rule: the policy is asked once per column.
        self._codes: dict[str, dict[tuple[str, str], _Rule]] = {}

    def __repr__(self) -> str:
        return f"Protector(policy={len(self._policy.kinds)} kinds, keys=<redacted>)"

    def subject_id_for(self, kind: str, canonical_value: str) -> bytes:
        """The subject id of a person named by one canonical value (for `pii shred`)."""
        return subject_id(self._keys, kind, canonical_value)

    def protect(self, source: str, fields: Sequence[FieldIn]) -> ProtectedRecord:
        return self.protect_batch(source, [fields])[0]

    def protect_batch(self, source: str, records: Sequence[Sequence[FieldIn]]) -> list[ProtectedRecord]:
        """Protect a batch: one data-key fetch for all its subjects.

        The fields are those :meth:`BatchSealer.pack_into` packs (the ingest path),
        unpacked: one implementation of the policy, whichever form a caller needs."""
        if len(records) > RECORDS_PER_BATCH_MAX:
            raise PiiError(f"batch of {len(records)} records exceeds {RECORDS_PER_BATCH_MAX}")
        batch = self.batch(source)
        packed: list[list[bytes]] = []
        for fields in records:
            out: list[bytes] = []
            batch.pack_into(out, fields)
            packed.append(out)
        batch.seal()
        protected = []
        for out in packed:
            unpacked = tuple(msgpack.unpackb(field, raw=False) for field in out)
            protected.append(ProtectedRecord(_subject_of(unpacked), unpacked))
        return protected

    def batch(self, source: str) -> BatchSealer:
        """A batch of records of ``source`` to protect (see :class:`BatchSealer`)."""
        return BatchSealer(self, source)

    def _codes_for(self, source: str) -> dict[tuple[str, str], _Rule]:
        codes = self._codes.get(source)
        if codes is None or len(codes) >= ACTION_CACHE_ENTRIES_MAX:
            if len(self._codes) >= ACTION_CACHE_ENTRIES_MAX:
                self._codes.clear()
            codes = self._codes[source] = {}
        return codes

    def _rule(self, source: str, codes: dict[tuple[str, str], _Rule], column: str, kind: str) -> _Rule:
        kind_utf8 = kind.encode()
        flags = _FLAGS[self._policy.action(source, column, kind)]
        layout = _sealed_layout(column, kind, bool(flags & _INDEX)) if flags & _SEAL else None
        rule = (flags, _SUBJECT_RANK.get(kind, _NO_RANK), kind_utf8 + b"\x00", kind_utf8, layout)
        codes[(column, kind)] = rule
        return rule


# The constant bytes of a sealed field's canonical msgpack map around its three
# variable parts (bi, ct, sub): see ``_sealed_layout``.
_Layout = tuple[bytes, bytes, bytes, bytes, bytes]

# What the policy does with the fields of one (column, kind), for the inner loop: (action
# flags, rank as the record's subject, the kind in UTF-8 and a NUL (the head of its
# fingerprinted messages), the kind in UTF-8, the packed layout of its sealed fields if
# it seals them). Built once per (column, kind), so the per-field path only looks it up.
_Rule = tuple[int, int, bytes, bytes, "_Layout | None"]

# A field of a record to seal once the record's subject is known: (its index in out, its
# column, its blind index or b"", its value in UTF-8, its kind's rule).
_ToSeal = tuple[int, str, bytes, bytes, _Rule]

# A packed field waiting for its ciphertext: (the list it is in, its index there, its
# layout, blind index or b"", msgpack bin header of the sealed value, plaintext, subject,
# the field's associated data).
_Pending = tuple[list[bytes], int, _Layout, bytes, bytes, bytes, bytes, bytes]


class ColumnFields(NamedTuple):
    """The protected fields of a run of records given column by column, prepared by
    :meth:`BatchSealer.prepare_columns` and placed by :meth:`BatchSealer.place_columns`
    (per column: its rule, its values in UTF-8, their blind indexes and sealed-value
    headers if it has them; per record: its subject if a column is sealed)."""

    names: list[tuple[str, str]]
    rules: list[_Rule]
    plaintexts: list[list[bytes]]
    indexes: list[list[bytes] | None]
    headers: list[list[bytes] | None]
    subjects: list[bytes] | None


# The rule codes of a field that is protected (sealed, indexed or both): a column of
# these can be prepared column by column.
_PROTECTED_CODES = frozenset({_SEAL, _INDEX, _SEAL | _INDEX})

_BIN8_SIZES = 256
_BIN8_HEADERS = [b"\xc4" + bytes((size,)) for size in range(_BIN8_SIZES)]
_BIN16_MAX = 0xFFFF

# msgpack header of a 16-byte bin: a blind index and a subject id are packed with it.
_BIN_OF_16 = _BIN8_HEADERS[16]
assert BLIND_INDEX_BYTES == SUBJECT_ID_BYTES == 16

_pack_map_header = msgpack.Packer().pack_map_header

def _bin_header(size: int) -> bytes:
    """The canonical msgpack header of a bin value of ``size`` bytes (size < 2**32)."""
    if size < _BIN8_SIZES:
        return _BIN8_HEADERS[size]
    if size <= _BIN16_MAX:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def _sealed_headers(plaintexts: Sequence[bytes]) -> list[bytes]:
    """The msgpack bin header of each value once sealed (its length plus the overhead)."""
    sizes = map(operator.add, map(len, plaintexts), itertools.repeat(OVERHEAD_BYTES))
    if max(map(len, plaintexts), default=0) + OVERHEAD_BYTES < _BIN8_SIZES:
        return list(map(_BIN8_HEADERS.__getitem__, sizes))
    return list(map(_bin_header, sizes))


def _keyed_digests(inner_pad: Callable[[], hashlib._Hash], outer_pad: Callable[[], hashlib._Hash],
                   prefix: bytes, messages: Sequence[bytes]) -> list[bytes]:
    """HMAC(key, prefix + message)[:16] of each message, from copies of the key's hashed
    pads (``KeyedHash.pads``): a blind index or a subject id per value of a column."""
    digests: list[bytes] = []
    append = digests.append
    for message in messages:
        inner = inner_pad()
        inner.update(prefix + message)
        outer = outer_pad()
        outer.update(inner.digest())
        append(outer.digest()[:BLIND_INDEX_BYTES])
    return digests


def _sealed_layout(column: str, kind: str, indexed: bool) -> _Layout:
    """Canonical msgpack of ``{bi?, col, ct, kind, sub}`` cut around bi, ct and sub:
    (head, middle, tail) with ct, and (head, middle) of the same map without ct (a
    shredded subject's field). The keys are in sorted order; tested equal to packing the
    field as a dict."""
    entries = 4 + indexed
    bi_key = msgpack.packb("bi") + _BIN_OF_16 if indexed else b""
    col = msgpack.packb("col") + msgpack.packb(column)
    tail = msgpack.packb("kind") + msgpack.packb(kind) + msgpack.packb("sub") + _BIN_OF_16
    return (_pack_map_header(entries) + bi_key, col + msgpack.packb("ct"), tail,
            _pack_map_header(entries - 1) + bi_key, col)


class BatchSealer:
    """Protects a batch of records straight into canonical msgpack, in two steps:
    :meth:`pack_into` appends each record's protected fields, packed, as the record
    arrives (a field still to be sealed is a placeholder), and :meth:`seal` fetches the
    batch's data keys in one key-store call and puts every sealed field in place.

    No dict is built per field and nothing is packed twice: at ingest rates a field's
    dict and the encoder's walk over it cost more than its crypto. The packed fields are
    those of :meth:`Protector.protect_batch`, which is built on this.
    """

    __slots__ = ("_bi_inner", "_bi_outer", "_codes", "_pending", "_protector",
                 "_records", "_source", "_subject_inner", "_subject_outer", "_subjects")

    def __init__(self, protector: Protector, source: str) -> None:
        self._protector = protector
        self._source = source
        self._codes = protector._codes_for(source)
        self._bi_inner, self._bi_outer = protector._keys.blind.pads()
        self._subject_inner, self._subject_outer = protector._keys.subject.pads()
        self._pending: list[_Pending] = []
        self._subjects: dict[bytes, None] = {}  # insertion-ordered set
        self._records = 0

    def __repr__(self) -> str:
        return f"BatchSealer({self._records} records, {len(self._pending)} fields to seal)"

    def pack_into(self, out: list[bytes], record: Sequence[FieldIn]) -> int:
        """Append the record's protected fields, each packed, to ``out``; their count.

        A field to seal is an empty placeholder in ``out`` until :meth:`seal`, so ``out``
        must not be used before then. One pass over the record with names bound to
        locals, the keyed hashes inlined (see ``KeyedHash.digest``): this runs for every
        ingested record.
        """
        if len(record) > FIELDS_PER_RECORD_MAX:
            raise PiiError(f"record of {len(record)} fields exceeds {FIELDS_PER_RECORD_MAX}")
        self._records += 1
        if self._records > RECORDS_PER_BATCH_MAX:
            raise PiiError(f"batch of {self._records} records exceeds {RECORDS_PER_BATCH_MAX}")
        codes = self._codes
        packb = msgpack.packb
        first = len(out)
        sealed: list[_ToSeal] = []
        best_rank = _NO_RANK
        best_value = ""
        best_kind_nul = b""
        for column, kind, value in record:
            rule = codes.get((column, kind))
            if rule is None:
                rule = self._protector._rule(self._source, codes, column, kind)
            code, rank, kind_nul, _, _ = rule
            if value and rank < best_rank:
                # The subject rule looks at every present field, whatever its action.
                best_rank, best_value, best_kind_nul = rank, value, kind_nul
            if not code:
                continue  # drop
            # An empty value carries nothing personal, and sealing or indexing it would
            # tie together every record that lacks the value.
            if code == _KEEP or not value:
                out.append(packb({"col": column, "kind": kind, "v": value}))
                continue
            plaintext = value.encode()
            bi = b""
            if code & _INDEX:
                # blind_index() inlined: HMAC(key, kind NUL value)[:16] (tested equal).
                inner = self._bi_inner()
                inner.update(kind_nul + plaintext)
                outer = self._bi_outer()
                outer.update(inner.digest())
                bi = outer.digest()[:BLIND_INDEX_BYTES]
            if code & _SEAL:
                sealed.append((len(out), column, bi, plaintext, rule))
                out.append(b"")  # placeholder, see seal()
            else:
                # Keys in sorted order: canonical msgpack needs sorted maps.
                out.append(packb({"bi": bi, "col": column, "kind": kind}))
        if sealed:
            # The subject's message "subject" NUL kind NUL value (see _pend); without a
            # subject field, the first sealed field names the subject.
            if best_rank < _NO_RANK:
                message = SUBJECT_LABEL + best_kind_nul + best_value.encode()
            else:
                message = SUBJECT_LABEL + sealed[0][4][2] + sealed[0][3]
            self._pend(out, sealed, message)
        return len(out) - first

    def prepare_columns(self, columns: Sequence[tuple[str, str, Sequence[str]]]) -> ColumnFields | None:
        """The fields of records that each hold every one of ``columns`` ((column, kind,
        the records' canonical values)), as :meth:`pack_into` would pack them record by
        record, computed column by column; None if a column is not protected by the
        policy (kept or dropped) or a value is empty or too long to seal: such records
        go through :meth:`pack_into`, which handles (or reports) every case.

        Nothing is queued yet (see :meth:`place_columns`): the records may be split
        over batches."""
        if not columns or len(columns) > FIELDS_PER_RECORD_MAX:
            return None
        codes = self._codes
        rules = [codes.get((column, kind)) or self._protector._rule(self._source, codes, column, kind)
                 for column, kind, _ in columns]
        if any(rule[0] not in _PROTECTED_CODES for rule in rules):
            return None
        plaintexts = [list(map(str.encode, values)) for _, _, values in columns]
        if any(b"" in values or max(map(len, values), default=0) > FIELD_PLAINTEXT_BYTES_MAX
               for values in plaintexts):
            return None
        indexes = [_keyed_digests(self._bi_inner, self._bi_outer, rule[2], values) if rule[0] & _INDEX
                   else None for rule, values in zip(rules, plaintexts, strict=True)]
        headers = [_sealed_headers(values) if rule[0] & _SEAL else None
                   for rule, values in zip(rules, plaintexts, strict=True)]
        return ColumnFields([(column, kind) for column, kind, _ in columns], rules, plaintexts,
                            indexes, headers, self._column_subjects(rules, plaintexts))

    def _column_subjects(self, rules: list[_Rule], plaintexts: list[list[bytes]]) -> list[bytes] | None:
        """Each record's subject (see :meth:`pack_into`): named by the column of the best
        rank (the first of equals), else by the first sealed column; None if no column
        is sealed."""
        if not any(rule[0] & _SEAL for rule in rules):
            return None
        best = min(range(len(rules)), key=lambda column: rules[column][1])
        if rules[best][1] == _NO_RANK:
            best = next(column for column, rule in enumerate(rules) if rule[0] & _SEAL)
        return _keyed_digests(self._subject_inner, self._subject_outer,
                              SUBJECT_LABEL + rules[best][2], plaintexts[best])

    def place_columns(self, fields: ColumnFields, first: int, last: int, out: list[bytes],
                      slots: Sequence[int]) -> None:
        """Queue records ``first`` to ``last`` (excluded) of ``fields`` in this batch: the
        fields of the i-th go to ``out[slots[i]]``, ``out[slots[i] + 1]``... in column
        order, where the caller has put placeholders. Their sealed fields are queued in
        record order, as :meth:`pack_into` queues them (they draw the same nonces)."""
        count = last - first
        if self._records + count > RECORDS_PER_BATCH_MAX:
            raise PiiError(f"batch of {RECORDS_PER_BATCH_MAX + 1} records exceeds {RECORDS_PER_BATCH_MAX}")
        self._records += count
        subjects = fields.subjects[first:last] if fields.subjects is not None else []
        self._subjects.update(dict.fromkeys(subjects))
        queued = []
        for column, (rule, names) in enumerate(zip(fields.rules, fields.names, strict=True)):
            where = map(operator.add, slots, itertools.repeat(column))
            column_indexes = fields.indexes[column]
            indexes = itertools.repeat(b"") if column_indexes is None else column_indexes[first:last]
            headers = fields.headers[column]
            if headers is None:  # indexed only: packed now, keys in sorted order
                packed = [msgpack.packb({"bi": bi, "col": names[0], "kind": names[1]}) for bi in indexes]
                collections.deque(map(operator.setitem, itertools.repeat(out), where, packed), maxlen=0)
                continue
            layout = rule[4]
            assert layout is not None  # every sealing rule has one
            ads = map(b"".join, zip(itertools.repeat(_FORMAT), subjects, itertools.repeat(rule[3])))
            queued.append(zip(itertools.repeat(out), where, itertools.repeat(layout), indexes,
                              headers[first:last], fields.plaintexts[column][first:last], subjects, ads))
        if queued:
            self._pending.extend(itertools.chain.from_iterable(zip(*queued, strict=True)))

    def _pend(self, out: list[bytes], sealed: list[_ToSeal], message: bytes) -> None:
        """Queue a record's fields to seal under the key of the subject ``message`` names
        (see :meth:`seal`)."""
        # subject_id() inlined: HMAC(key, "subject" NUL kind NUL value)[:16] (tested equal).
        inner = self._subject_inner()
        inner.update(message)
        outer = self._subject_outer()
        outer.update(inner.digest())
        subject = outer.digest()[:SUBJECT_ID_BYTES]
        self._subjects[subject] = None
        pending = self._pending
        ad_head = _FORMAT + subject
        for index, column, bi, plaintext, rule in sealed:
            size = len(plaintext)
            if size > FIELD_PLAINTEXT_BYTES_MAX:
                raise PiiError(f"column {column!r}: a {rule[3].decode()} value of {size} "
                               f"bytes exceeds {FIELD_PLAINTEXT_BYTES_MAX}")
            size += OVERHEAD_BYTES  # the length of the sealed value, known before sealing
            layout = rule[4]
            assert layout is not None  # every sealing rule has one
            header = _BIN8_HEADERS[size] if size < _BIN8_SIZES else _bin_header(size)
            # The associated data (envelope.field_ad): version | subject | kind.
            pending.append((out, index, layout, bi, header, plaintext, subject, ad_head + rule[3]))

    def seal(self) -> None:
        """Fetch the data keys of the batch's subjects (one key-store call, durable
        before this returns) and put every sealed field in place. A field of a shredded
        subject has no ``ct``: its value is never stored."""
        pending, self._pending = self._pending, []
        subjects, self._subjects = list(self._subjects), {}
        self._records = 0
        if not subjects:
            return
        deks = self._protector._source.data_keys(subjects)
        missing = [s for s in subjects if s not in deks]
        if missing:
            raise PiiError(f"key store returned no data key for subject {missing[0].hex()}")
        nonces = self._protector._random_bytes(NONCE_BYTES * len(pending))
        join = b"".join
        offset = 0
        # A record's fields are queued together under one subject object: its cipher is
        # made when the subject changes and dropped at the next one. Ciphers made for the
        # whole batch up front and held were measured ~0.8 us per record slower (memory).
        last_subject: bytes | None = None
        encrypt: Callable[[bytes, bytes, bytes], bytes] | None = None
        for out, index, layout, bi, header, plaintext, subject, ad in pending:
            if subject is not last_subject:
                last_subject = subject
                dek = deks[subject]
                encrypt = None if dek is None else AESGCM(dek).encrypt
            if encrypt is None:  # shredded: the value is not kept
                out[index] = join((layout[3], bi, layout[4], layout[2], subject))
                continue
            nonce = nonces[offset : offset + NONCE_BYTES]
            offset += NONCE_BYTES
            # ct = version | nonce | ciphertext and tag (see envelope.seal), as msgpack bin.
            out[index] = join((layout[0], bi, layout[1], header, _FORMAT, nonce,
                               encrypt(nonce, plaintext, ad), layout[2], subject))


def _subject_of(fields: Sequence[ProtectedField]) -> bytes | None:
    """The record's subject: every sealed field carries it; None if nothing was sealed."""
    for field in fields:
        subject = field.get("sub")
        if isinstance(subject, bytes):
            return subject
    return None


def _typed(field: Mapping[str, object], key: str, kind: type) -> object:
    value = field.get(key)
    if value is not None and not isinstance(value, kind):
        raise PiiError(f"protected field: {key!r} must be {kind.__name__}")
    return value


def reveal(field: Mapping[str, object], keys: DataKeyReader) -> str:
    """The clear value of a protected field.

    Raises :class:`ShreddedError` if its subject's data key was destroyed, and
    :class:`PiiError` if the field was kept only as a blind index or does not
    authenticate (moved to another kind or subject, corrupted, forged).
    """
    kind = _typed(field, "kind", str)
    ct = _typed(field, "ct", bytes)
    sub = _typed(field, "sub", bytes)
    value = _typed(field, "v", str)
    if not isinstance(kind, str):
        raise PiiError("protected field has no kind")
    if isinstance(sub, bytes) and len(sub) != SUBJECT_ID_BYTES:
        raise PiiError(f"protected {kind} field: subject id must be {SUBJECT_ID_BYTES} bytes")
    if isinstance(value, str):
        return value
    if not isinstance(sub, bytes):
        if "bi" in field:
            raise PiiError(f"{kind} value was kept only as a keyed fingerprint; it has no value")
        raise PiiError(f"protected {kind} field holds neither a value nor a ciphertext")
    dek = keys.data_key(sub) if isinstance(ct, bytes) else None
    if dek is None or not isinstance(ct, bytes):
        raise ShreddedError(f"{kind} value of subject {sub.hex()} was shredded; it cannot be recovered")
    return open_field(AESGCM(dek), kind, sub, ct)
