"""Fold events into the effects one transaction applies (pure: events in, a Delta out).

Each event kind of docs/events.md maps to vertex and edge upserts; cells of the same
property are merged here already, so a batch of thousands of events reaches the store as
one :class:`~heimdall_core.graph.model.Delta` with every value deduplicated.

An event whose (kind, version) this build does not know, or whose payload does not have
the documented shape, raises (:class:`UnknownEventError`, :class:`PayloadError`) and
leaves the delta exactly as it was before that event: the projector stops that feed there
and carries on with the others. Nothing is ever skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from heimdall_core import kinds
from heimdall_core.errors import GraphError, UnknownEventError
from heimdall_core.events import Event
from heimdall_core.graph import model
from heimdall_core.graph.model import (
    BLIND_INDEX_BYTES,
    DUMP_ID_BYTES,
    PERSON_KINDS,
    SUBJECT_ID_BYTES,
    Delta,
    SightingDelta,
    ValueDelta,
)
from heimdall_core.graph.rules import (
    FACT_NAME_RE,
    FACT_PREFIX,
    Rule,
    RuleSet,
    lift,
    merge,
    merge_seals,
    order_key,
)

VID_CACHE_ENTRIES_MAX = 262_144
"""Value ids remembered between batches (hot values: domains, popular addresses)."""

KIND_CHARS_MAX = 32
COLUMN_CHARS_MAX = 1024
FACTS_PER_EVENT_MAX = 256

_PERSON_RANK: Mapping[str, int] = {kind: rank for rank, kind in enumerate(PERSON_KINDS)}
_NO_RANK = len(PERSON_KINDS)


class PayloadError(GraphError):
    """A known event kind whose payload does not have the documented shape."""


def where(event: Event) -> str:
    return f"feed {event.feed.hex()} seq {event.seq} ({event.kind} v{event.version})"


class Folder:
    """Accumulates the effects of events, in any order, into one :class:`Delta`."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.delta = Delta()
        self._events: list[Event] = []
        self._vids: dict[tuple[str, str | bytes], bytes] = {}
        self._handlers: dict[tuple[str, int], Callable[[Event, bytes], None]] = {
            kinds.NOTE: _no_effect,
            kinds.FEED_ANNOUNCED: _no_effect,
            kinds.DUMP_STARTED: self._dump_started,
            kinds.RECORDS_INGESTED: self._records_ingested,
            kinds.DUMP_FINISHED: self._dump_finished,
            kinds.SUBJECT_SHREDDED: self._subject_shredded,
            kinds.ENRICHMENT_RECEIVED: self._enrichment_received,
        }
        unknown = set(self._handlers) ^ kinds.KNOWN
        assert not unknown, f"fold handlers and kinds.KNOWN disagree on {unknown}"

    def add(self, event: Event) -> None:
        """Fold one event; on error the delta is left as it was before this event."""
        handler = self._handlers.get((event.kind, event.version))
        if handler is None:
            raise UnknownEventError(
                f"{where(event)}: this build does not know event kind {event.kind!r} "
                f"version {event.version}; projection of this feed stops here until Heimdall "
                "is upgraded (other feeds continue)")
        order = order_key(event.hlc.physical_ms, event.hlc.logical, event.feed, event.seq)
        try:
            handler(event, order)
        except PayloadError:
            self._rebuild()
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            self._rebuild()
            raise PayloadError(f"{where(event)}: payload does not have the documented shape "
                               f"({type(exc).__name__}: {exc}); projection of this feed stops "
                               "here") from None
        self.delta.positions[event.feed] = event.seq + 1
        self.delta.events += 1
        self._events.append(event)

    def take(self) -> Delta:
        """The accumulated delta; the folder starts a new one."""
        delta, self.delta, self._events = self.delta, Delta(), []
        if len(self._vids) > VID_CACHE_ENTRIES_MAX:
            self._vids.clear()
        return delta

    def _rebuild(self) -> None:
        """Redo the delta from the events before the failing one (partial effects vanish)."""
        events, self.delta, self._events = self._events, Delta(), []
        for event in events:
            self.add(event)

    # --- dumps ---------------------------------------------------------------------------

    def _dump_props(self, dump: bytes, contributions: Mapping[str, Any], order: bytes,
                    provider: str | None) -> None:
        rules = self.rules
        rank = rules.rank(provider)
        cells = {prop: lift(rules.rule(model.DUMP, prop), value, order, rank)
                 for prop, value in contributions.items()}
        held = self.delta.dumps.get(dump)
        self.delta.dumps[dump] = cells if held is None else rules.merge_props(model.DUMP, held, cells)

    def _dump_started(self, event: Event, order: bytes) -> None:
        p = event.payload
        dump = _bin(p, "dump", DUMP_ID_BYTES, event)
        source = _str(p, "source", event)
        mapping = _str_map(p, "mapping", event)
        props: dict[str, Any] = {
            "source": source, "name": _str(p, "name", event), "format": _str(p, "format", event),
            "compression": _str(p, "compression", event), "columns": _str_list(p, "columns", event),
            "mapping": mapping, "parts": _int(p, "parts", event), "meta": _str_map(p, "meta", event),
            "started_ms": event.hlc.physical_ms,
        }
        _known_size(props, p, event)
        self._dump_props(dump, props, order, source)
        for column, kind in mapping.items():
            self.delta.fields.add((dump, column, kind))

    def _dump_finished(self, event: Event, order: bytes) -> None:
        p = event.payload
        dump = _bin(p, "dump", DUMP_ID_BYTES, event)
        props: dict[str, Any] = {
            "records": _int(p, "records", event), "quarantined": _int(p, "quarantined", event),
            "finished_ms": event.hlc.physical_ms,
        }
        _known_size(props, p, event)
        if "duplicate_of" in p:
            props["duplicate_of"] = _bin(p, "duplicate_of", DUMP_ID_BYTES, event)
        self._dump_props(dump, props, order, None)

    # --- records -------------------------------------------------------------------------

    def _records_ingested(self, event: Event, order: bytes) -> None:
        p = event.payload
        dump = _bin(p, "dump", DUMP_ID_BYTES, event)
        part = _int(p, "part", event)
        records = p["records"]
        if type(records) is not list:
            raise PayloadError(f"{where(event)}: 'records' must be an array")
        rules, ms = self.rules, event.hlc.physical_ms
        base = {
            "first_seen_ms": lift(rules.rule(model.VALUE, "first_seen_ms"), ms, order, rules.rank(None)),
            "last_seen_ms": lift(rules.rule(model.VALUE, "last_seen_ms"), ms, order, rules.rank(None)),
        }
        attrs_rule = rules.rule(model.VALUE, "attrs")
        self.delta.dumps.setdefault(dump, {})  # the dump vertex exists once anything names it
        touched: set[bytes] = set()  # values this event already contributed its base cells to
        for record in records:
            position, fields = record
            if type(position) is not int or type(fields) is not list:
                raise PayloadError(f"{where(event)}: a record must be [position: int, fields: array]")
            sighting = SightingDelta(ms, None, [], [])
            best = _NO_RANK + 1
            for field in fields:
                vid = self._field(event, order, dump, field, sighting, base, attrs_rule, touched)
                if vid is not None:
                    rank = _PERSON_RANK.get(field["kind"], _NO_RANK)
                    if rank < best:
                        best, sighting.entity = rank, vid
            self._add_sighting((dump, part, position), sighting)
        self.delta.records += len(records)

    def _field(self, event: Event, order: bytes, dump: bytes, field: Mapping[str, Any],
               sighting: SightingDelta, base: Mapping[str, Any], attrs_rule: Rule,
               touched: set[bytes]) -> bytes | None:
        """Fold one protected field; returns its value id (None: no value vertex)."""
        column, kind = field["col"], field["kind"]
        if type(column) is not str or type(kind) is not str or len(kind) > KIND_CHARS_MAX \
                or len(column) > COLUMN_CHARS_MAX:
            raise PayloadError(f"{where(event)}: a field needs 'col' and 'kind' strings")
        clear = field.get("v")
        if clear is not None:
            if type(clear) is not str:
                raise PayloadError(f"{where(event)}: field {column!r}: 'v' must be a string")
            if not clear:
                return None  # an empty cell carries nothing and would join unrelated records
            vid = self._value(kind, clear, None, base, touched)
            attrs = field.get("a")
            if attrs is not None:
                cell = lift(attrs_rule, _attrs(attrs, event), order, 0)
                self._merge_value_prop(vid, "attrs", attrs_rule, cell)
        else:
            subject = field.get("sub")
            ct = field.get("ct")
            blind = field.get("bi")
            if subject is not None:
                _check_bin(subject, SUBJECT_ID_BYTES, "sub", event)
            if ct is not None and type(ct) is not bytes:
                raise PayloadError(f"{where(event)}: field {column!r}: 'ct' must be binary")
            if blind is None:
                if subject is not None and ct is not None:
                    sighting.sealed.append((column, kind, subject, ct))
                return None  # sealed only (or shredded before ingest): not joinable
            _check_bin(blind, BLIND_INDEX_BYTES, "bi", event)
            vid = self._value(kind, None, blind, base, touched)
            if subject is not None and ct is not None:
                self._merge_value_prop(vid, "seals", Rule.SEALS, [[subject, ct]])
        self.delta.fields.add((dump, column, kind))
        sighting.values.append((vid, column, kind))
        return vid

    def _value(self, kind: str, clear: str | None, blind: bytes | None, base: Mapping[str, Any],
               touched: set[bytes]) -> bytes:
        key = (kind, clear if clear is not None else blind)
        vid = self._vids.get(key)  # type: ignore[arg-type]
        if vid is None:
            vid = (model.clear_value_vid(kind, clear) if clear is not None
                   else model.blind_value_vid(kind, blind))  # type: ignore[arg-type]
            self._vids[key] = vid  # type: ignore[index]
        values = self.delta.values
        held = values.get(vid)
        if held is None:
            values[vid] = ValueDelta(kind, clear, blind, dict(base))
            touched.add(vid)
        elif vid not in touched:
            held.props = self.rules.merge_props(model.VALUE, held.props, base)
            touched.add(vid)
        return vid

    def _merge_value_prop(self, vid: bytes, prop: str, rule: Rule, cell: Any) -> None:
        props = self.delta.values[vid].props
        held = props.get(prop)
        if held is None:
            props[prop] = cell
        elif held != cell:
            props[prop] = merge_seals(held, cell) if rule is Rule.SEALS else merge(rule, held, cell)

    def _add_sighting(self, key: tuple[bytes, int, int], sighting: SightingDelta) -> None:
        held = self.delta.sightings.get(key)
        if held is None:
            self.delta.sightings[key] = sighting
            return
        # The same record position twice (a re-ingest under the same dump id): union.
        held.seen_ms = min(held.seen_ms, sighting.seen_ms)
        held.values.extend(v for v in sighting.values if v not in held.values)
        held.sealed.extend(s for s in sighting.sealed if s not in held.sealed)
        if held.entity is None or (sighting.entity is not None and sighting.entity < held.entity):
            held.entity = sighting.entity

    # --- subjects and enrichment ---------------------------------------------------------------

    def _subject_shredded(self, event: Event, order: bytes) -> None:
        subject = _bin(event.payload, "subject", SUBJECT_ID_BYTES, event)
        cell = lift(Rule.MIN, event.hlc.physical_ms, order, 0)
        held = self.delta.subjects.get(subject)
        self.delta.subjects[subject] = ({"shredded_ms": cell} if held is None
                                        else self.rules.merge_props(model.SUBJECT, held,
                                                                    {"shredded_ms": cell}))

    def _enrichment_received(self, event: Event, order: bytes) -> None:
        p = event.payload
        provider = _str(p, "provider", event)
        kind = _str(p, "kind", event)
        value = _str(p, "value", event)
        facts = p["facts"]
        observed = _int(p, "observed_ms", event)
        if not isinstance(facts, dict) or len(facts) > FACTS_PER_EVENT_MAX:
            raise PayloadError(f"{where(event)}: 'facts' must be a map of at most "
                               f"{FACTS_PER_EVENT_MAX} entries")
        if not value or len(kind) > KIND_CHARS_MAX:
            raise PayloadError(f"{where(event)}: 'kind' and 'value' must name an indicator")
        rules = self.rules
        rank = rules.rank(provider)
        props: dict[str, Any] = {
            "enriched_by": lift(Rule.UNION, provider, order, rank),
            "enriched_ms": lift(Rule.MAX, observed, order, rank),
        }
        for name, fact in facts.items():
            if not FACT_NAME_RE.match(name):
                raise PayloadError(f"{where(event)}: fact name {name!r} is not allowed")
            prop = FACT_PREFIX + name
            props[prop] = lift(rules.rule(model.VALUE, prop), _fact_value(fact, name, event), order, rank)
        vid = model.clear_value_vid(kind, value)
        held = self.delta.values.get(vid)
        if held is None:
            self.delta.values[vid] = ValueDelta(kind, value, None, props)
        else:
            held.props = rules.merge_props(model.VALUE, held.props, props)


# --- payload checks ----------------------------------------------------------------------


def _no_effect(event: Event, order: bytes) -> None:
    """`note` and `feed.announced`: no graph effect; the feed's position still advances."""


def _bin(p: Mapping[str, Any], key: str, size: int, event: Event) -> bytes:
    value = p.get(key)
    _check_bin(value, size, key, event)
    assert isinstance(value, bytes)
    return value


def _check_bin(value: object, size: int, key: str, event: Event) -> None:
    if type(value) is not bytes or len(value) != size:
        raise PayloadError(f"{where(event)}: {key!r} must be {size} bytes of binary")


def _str(p: Mapping[str, Any], key: str, event: Event) -> str:
    value = p.get(key)
    if type(value) is not str:
        raise PayloadError(f"{where(event)}: {key!r} must be a string")
    return value


def _int(p: Mapping[str, Any], key: str, event: Event) -> int:
    value = p.get(key)
    if type(value) is not int:
        raise PayloadError(f"{where(event)}: {key!r} must be an integer")
    return value


def _str_list(p: Mapping[str, Any], key: str, event: Event) -> list[str]:
    value = p.get(key)
    if type(value) is not list or any(type(item) is not str for item in value):
        raise PayloadError(f"{where(event)}: {key!r} must be an array of strings")
    return value


def _str_map(p: Mapping[str, Any], key: str, event: Event) -> dict[str, str]:
    value = p.get(key)
    if type(value) is not dict or any(type(item) is not str for item in value.values()):
        raise PayloadError(f"{where(event)}: {key!r} must be a map of strings")
    return value


def _attrs(value: object, event: Event) -> dict[str, str]:
    if type(value) is not dict or any(type(item) is not str for item in value.values()):
        raise PayloadError(f"{where(event)}: derived attributes 'a' must be a map of strings")
    return value


def _known_size(props: dict[str, Any], p: Mapping[str, Any], event: Event) -> None:
    """sha256 and bytes, when known ("" and -1 mean not known up front: no contribution)."""
    sha256 = _str(p, "sha256", event)
    size = _int(p, "bytes", event)
    if sha256:
        props["sha256"] = sha256
    if size >= 0:
        props["bytes"] = size


def _fact_value(fact: object, name: str, event: Event) -> str | int | list[str]:
    if isinstance(fact, str | int) and not isinstance(fact, bool):
        return fact
    if isinstance(fact, list) and all(type(item) is str for item in fact):
        return fact
    raise PayloadError(f"{where(event)}: fact {name!r} must be a string, an integer or "
                       "an array of strings")
