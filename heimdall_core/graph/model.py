"""The graph model: vertex and edge types, deterministic ids, and the batch of effects (pure).

Every vertex has a natural key (the content that identifies it) and an id derived from
that key alone, so two sites create the same id for the same thing without talking::

    id = BLAKE2b-128(canonical msgpack [type, key part, ...])

Vertex types and their keys (docs/graph-model.md has the full model):

    dump      (dump id: bin16)                      one ingested input
    field     (dump id, column: str, kind: str)     a column of a dump, with its kind
    value     (kind, "v", canonical value: str)     a clear value
              (kind, "bi", blind index: bin16)      a personal value: only its blind index
    sighting  (dump id, part: int, position: int)   one record of one dump
    entity    (primary value id: bin16)             what a record's values belong to
    subject   (subject id: bin16)                   a person whose data key was destroyed

Edge types (source -> target), id = BLAKE2b-128(canonical msgpack [type, source id, target id]):

    in_dump    sighting -> dump
    has_value  sighting -> value    (property: the columns it was in)
    in_field   value -> field
    includes   entity -> value
    field_of   field -> dump

The projector folds events into a :class:`Delta` (what one transaction must do); each
store applies a delta with the merge rules of :mod:`heimdall_core.graph.rules`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from heimdall_core import kinds

ID_BYTES = 16
"""Vertex and edge ids: 128 bits, collision-free at any realistic volume."""

VALUE_PREFIXES_MAX = 1_024  # kinds remembered per form; kinds are a short list

DUMP_ID_BYTES = kinds.DUMP_ID_BYTES
BLIND_INDEX_BYTES = 16
SUBJECT_ID_BYTES = 16
FEED_ID_BYTES = 32

# Vertex types.
DUMP = "dump"
FIELD = "field"
VALUE = "value"
SIGHTING = "sighting"
ENTITY = "entity"
SUBJECT = "subject"
VERTEX_TYPES = (DUMP, FIELD, VALUE, SIGHTING, ENTITY, SUBJECT)

# Edge types.
IN_DUMP = "in_dump"
HAS_VALUE = "has_value"
IN_FIELD = "in_field"
INCLUDES = "includes"
FIELD_OF = "field_of"
EDGE_TYPES = (IN_DUMP, HAS_VALUE, IN_FIELD, INCLUDES, FIELD_OF)

# The two forms of a value key.
CLEAR = "v"
BLIND = "bi"

PERSON_KINDS: tuple[str, ...] = ("email", "username", "phone", "name")
"""Kinds that name a person, best first: a record's entity is its first value of the best kind."""

_packb = msgpack.Packer(use_bin_type=True).pack
_blake2b = hashlib.blake2b

Cell = Any
"""A merge-rule cell (see :mod:`heimdall_core.graph.rules`): plain msgpack data."""

Props = dict[str, Cell]
"""Property name -> cell."""


def content_id(vtype: str, *parts: str | int | bytes) -> bytes:
    """The id of a vertex from its type and natural key."""
    return _blake2b(_packb([vtype, *parts]), digest_size=ID_BYTES).digest()


def edge_id(etype: str, source: bytes, target: bytes) -> bytes:
    return _blake2b(_packb([etype, source, target]), digest_size=ID_BYTES).digest()


def dump_vid(dump: bytes) -> bytes:
    return content_id(DUMP, dump)


def field_vid(dump: bytes, column: str, kind: str) -> bytes:
    return content_id(FIELD, dump, column, kind)


_VALUE_PREFIXES: dict[str, dict[str, bytes]] = {CLEAR: {}, BLIND: {}}  # form -> kind -> prefix


def _value_prefix(kind: str, form: str) -> bytes:
    """msgpack of ["value", kind, form, ...] up to the last element (4-element fixarray)."""
    known = _VALUE_PREFIXES[form]
    prefix = known.get(kind)
    if prefix is None:
        prefix = b"\x94" + _packb(VALUE) + _packb(kind) + _packb(form)
        if len(known) < VALUE_PREFIXES_MAX:
            known[kind] = prefix
    return prefix


_CLEAR_PREFIXES = _VALUE_PREFIXES[CLEAR]
_BLIND_PREFIXES = _VALUE_PREFIXES[BLIND]


def clear_value_vid(kind: str, value: str) -> bytes:
    """= content_id(VALUE, kind, CLEAR, value), without building the list (hot path)."""
    prefix = _CLEAR_PREFIXES.get(kind) or _value_prefix(kind, CLEAR)
    return _blake2b(prefix + _packb(value), digest_size=ID_BYTES).digest()


def blind_value_vid(kind: str, blind_index: bytes) -> bytes:
    """= content_id(VALUE, kind, BLIND, blind_index)."""
    prefix = _BLIND_PREFIXES.get(kind) or _value_prefix(kind, BLIND)
    return _blake2b(prefix + _packb(blind_index), digest_size=ID_BYTES).digest()


def sighting_vid(dump: bytes, part: int, position: int) -> bytes:
    return content_id(SIGHTING, dump, part, position)


def entity_vid(primary_value: bytes) -> bytes:
    return content_id(ENTITY, primary_value)


def subject_vid(subject: bytes) -> bytes:
    return content_id(SUBJECT, subject)


FieldKey = tuple[bytes, str, str]
"""(dump id, column, kind)."""

SightingKey = tuple[bytes, int, int]
"""(dump id, part, position)."""

SealedField = tuple[str, str, bytes, bytes]
"""An encrypt-only field kept on its sighting: (column, kind, subject, ciphertext)."""


@dataclass(slots=True)
class ValueDelta:
    """A value's identity and the cells this batch contributes to its properties."""

    kind: str
    value: str | None  # canonical value when clear
    blind_index: bytes | None  # when personal
    props: Props
    sightings: int = 0  # how many of the delta's sightings hold it (assuming they are new)
    last_record: int = -1  # fold bookkeeping: the record that last counted it


@dataclass(slots=True)
class SightingDelta:
    """One record of one dump. ``values``: (value id, field key) in record order."""

    seen_ms: int
    entity: bytes | None  # the primary value's id (None: a record with no values)
    values: list[tuple[bytes, FieldKey]]
    sealed: list[SealedField]


@dataclass(slots=True)
class Delta:
    """Everything one transaction applies: effects of a run of events plus feed positions.

    Cells are already merged within the batch; the store merges them with what it holds.
    ``positions`` is each feed's next sequence number after this batch: a store writes them
    in the same transaction as the effects, so an event is applied exactly once.
    """

    dumps: dict[bytes, Props] = field(default_factory=dict)
    fields: set[FieldKey] = field(default_factory=set)
    values: dict[bytes, ValueDelta] = field(default_factory=dict)
    sightings: dict[SightingKey, SightingDelta] = field(default_factory=dict)
    subjects: dict[bytes, Props] = field(default_factory=dict)
    positions: dict[bytes, int] = field(default_factory=dict)
    events: int = 0
    records: int = 0

    def is_empty(self) -> bool:
        return not (self.dumps or self.fields or self.values or self.sightings or self.subjects
                    or self.positions)


# --- what stores give back -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One row of one section of the state, as a store yields it for the state hash.

    Sections, in the order a store yields them, and their rows (each section sorted by
    its rows' natural order: bytes bytewise, integers numerically, text by code point):

        dump      (dump id, props)                                     by dump id
        field     (dump id, column, kind)                              by the whole row
        value     (value id, kind, clear value | None, blind index | None, props)   by value id
        subject   (subject id, props)                                  by subject id
        sighting  (dump id, part, position, seen_ms, sealed, [(value id, column), ...])
                                                                       by (dump id, part, position)
        in_field  (value id, dump id, column, kind)                    by the whole row
        includes  (primary value id, member value id)                  by the whole row

    ``props`` are the stored cells (the hash reads their visible values); ``sealed`` is
    the sighting's union cell of encrypt-only fields.
    """

    section: str
    row: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ValueInfo:
    """A value as stored: identity, property cells, sealed copies and how often seen."""

    vid: bytes
    kind: str
    value: str | None
    blind_index: bytes | None
    props: Mapping[str, Cell]
    shredded_subjects: frozenset[bytes]
    sightings: int

    @property
    def seals(self) -> list[tuple[bytes, bytes]]:
        """(subject, ciphertext) pairs: one sealed copy of the value per subject."""
        return [(bytes(sub), bytes(ct)) for sub, ct in self.props.get("seals", [])]

    @property
    def is_protected(self) -> bool:
        return self.value is None

    @property
    def is_shredded(self) -> bool:
        """Every sealed copy belongs to a shredded subject (and there is at least one)."""
        seals = self.seals
        return bool(seals) and all(sub in self.shredded_subjects for sub, _ in seals)


@dataclass(frozen=True, slots=True)
class DumpSeen:
    """Where a value was seen: one dump, how many of its records, when (ingest time)."""

    dump: bytes
    source: str | None
    name: str | None
    sightings: int
    first_seen_ms: int
    last_seen_ms: int
    duplicate_of: bytes | None = None
    """Set when the dump is a repeat of an earlier one (same bytes, same source) that was
    only found to be one after it was read (an HTTP upload that declared no sha256)."""


@dataclass(frozen=True, slots=True)
class ValueDumps:
    """The dumps a value was seen in: the first ``limit`` listed, the rest counted.

    Repeat uploads are summed over every dump, listed or not, so the sightings an answer
    leaves out as "not new evidence" do not depend on how many dumps are listed."""

    items: tuple[DumpSeen, ...]
    """Most sightings first (ties: dump id), at most the ``limit`` asked for."""
    total: int
    """Dumps the value was seen in, listed or not."""
    repeats: tuple[bytes, ...]
    """Every repeat-upload dump (``duplicate_of`` set) the value was seen in, by id."""
    sightings_in_repeats: int
    sightings_scanned: int = 0
    """Sightings read, summed over every dump listed or not: fewer than the value's own
    count when the store read only the newest (``value_dumps(sightings_max=...)``)."""

    @property
    def complete(self) -> bool:
        """Every dump of the sightings read is listed (see ``sightings_scanned``)."""
        return len(self.items) == self.total

    def covers(self, sightings: int) -> bool:
        """Every dump of a value with ``sightings`` in all is listed: all were read."""
        return self.complete and self.sightings_scanned >= sightings

    @classmethod
    def ranked(cls, seen: Iterable[DumpSeen], limit: int) -> ValueDumps:
        """From every dump a value was seen in (any order), as each store reads them."""
        ordered = sorted(seen, key=lambda d: (-d.sightings, d.dump))
        repeats = [d for d in ordered if d.duplicate_of is not None]
        return cls(tuple(ordered[:limit]), len(ordered), tuple(sorted(d.dump for d in repeats)),
                   sum(d.sightings for d in repeats), sum(d.sightings for d in ordered))


@dataclass(frozen=True, slots=True)
class CoValue:
    value: ValueInfo
    records: int  # records (sightings) shared with the queried value


@dataclass(frozen=True, slots=True)
class CoValues:
    items: tuple[CoValue, ...]
    sightings_scanned: int
    complete: bool  # False when the value has more sightings than were scanned


@dataclass(frozen=True, slots=True)
class GraphCounts:
    dumps: int
    fields: int
    values: int
    sightings: int
    subjects: int
    feeds: int
