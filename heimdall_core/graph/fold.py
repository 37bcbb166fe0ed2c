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

import ipaddress
import logging
from collections.abc import Callable, Iterator, Mapping
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
    FieldKey,
    SealedField,
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
    same,
)
from heimdall_core.normalize import KINDS, Canonical, canonicalize
from heimdall_core.normalize.domain import has_canonical_shape

VID_CACHE_ENTRIES_MAX = 262_144
"""Value ids remembered between batches (hot values: domains, popular addresses)."""

FOLD_STEP_RECORDS = 128
"""Records folded between two turns of the projector's event loop: an event of 1,000
records takes ~15 ms to fold, and a store's statements in flight (a COPY's next chunk)
wait for the loop; 128 records are ~2 ms."""
_STEP_MASK = FOLD_STEP_RECORDS - 1  # FOLD_STEP_RECORDS is a power of two
KIND_CHARS_MAX = 32
COLUMN_CHARS_MAX = 1024
FACTS_PER_EVENT_MAX = 256

ENRICHABLE_KINDS: tuple[str, ...] = ("ip", "cidr", "domain", "hash")
"""The indicator kinds an ``enrichment.received`` may be about: kinds whose values name
infrastructure or content, never a person. The list is fixed here, not read from the
site's PII policy: every site must fold the same events the same way, and an enrichment
keys its facts on the value in clear, which shredding cannot remove. ``url`` is left out:
a URL can carry a user name and password (userinfo) and people's addresses or tokens in
its path and query; enrich its host (a domain or ip) instead."""

log = logging.getLogger("heimdall.graph.fold")

_PERSON_RANK: Mapping[str, int] = {kind: rank for rank, kind in enumerate(PERSON_KINDS)}
_NO_RANK = len(PERSON_KINDS)


_BASE_PROPS = ("first_seen_ms", "last_seen_ms")

_Column = tuple[FieldKey, str, dict[str, bytes], int]
"""A column of one event: (field key, kind, clear value -> id for that kind, person rank)."""


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
        self._clear_ids: dict[str, dict[str, bytes]] = {}  # kind -> clear value -> id
        self._record_no = 0
        self._base_rules = {prop: rules.rule(model.VALUE, prop) for prop in _BASE_PROPS}
        self._attrs_rule = rules.rule(model.VALUE, "attrs")
        self._handlers: dict[tuple[str, int], Callable[[Event, bytes], Iterator[None] | None]] = {
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
        for _ in self.steps(event):
            pass

    def steps(self, event: Event) -> Iterator[None]:
        """:meth:`add` in steps of at most FOLD_STEP_RECORDS records: the caller may let
        other work run between two (the projector lets the batch in flight send its next
        statement). Nothing but the caller may touch the folder until the steps end."""
        handler = self._handlers.get((event.kind, event.version))
        if handler is None:
            raise UnknownEventError(
                f"{where(event)}: this build does not know event kind {event.kind!r} "
                f"version {event.version}; projection of this feed stops here until Heimdall "
                "is upgraded (other feeds continue)")
        order = order_key(event.hlc.physical_ms, event.hlc.logical, event.feed, event.seq)
        try:
            stepwise = handler(event, order)
            if stepwise is not None:
                yield from stepwise
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
        if sum(map(len, self._clear_ids.values())) > VID_CACHE_ENTRIES_MAX:
            self._clear_ids = {}
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

    def _records_ingested(self, event: Event, order: bytes) -> Iterator[None]:
        """The hot path (millions of fields): one loop, few calls, ids cached; a step
        ends every FOLD_STEP_RECORDS records."""
        p = event.payload
        dump = _bin(p, "dump", DUMP_ID_BYTES, event)
        part = _int(p, "part", event)
        records = p["records"]
        if type(records) is not list:
            raise PayloadError(f"{where(event)}: 'records' must be an array")
        ms = event.hlc.physical_ms
        base = self._base_cells(ms, order)
        delta = self.delta
        delta.dumps.setdefault(dump, {})  # the dump vertex exists once anything names it
        values, sightings = delta.values, delta.sightings
        attrs_lww = self._attrs_rule is Rule.LWW
        columns: dict[str, _Column] = {}  # for this event
        record_no = self._record_no
        # A value last counted by an earlier record than this event's first has not had
        # this event's base cells yet (within one event they are the same every time).
        event_first = record_no + 1
        for record in records:
            record_no += 1
            if not record_no & _STEP_MASK:
                yield
            position, fields = record
            if type(position) is not int or type(fields) is not list:
                raise PayloadError(f"{where(event)}: a record must be [position: int, fields: array]")
            pairs: list[tuple[bytes, FieldKey]] = []
            sealed: list[SealedField] = []
            entity, best = None, _NO_RANK + 1
            for field in fields:
                column, kind = field["col"], field["kind"]
                plan = columns.get(column)
                if plan is None or plan[1] != kind:
                    plan = self._column(event, dump, column, kind, columns)
                fk, _, ids, rank = plan
                clear = field.get("v")
                if clear is not None:
                    if type(clear) is not str:
                        raise PayloadError(f"{where(event)}: field {column!r}: 'v' must be a string")
                    if not clear:
                        continue  # an empty cell carries nothing and would join unrelated records
                    vid = ids.get(clear)
                    if vid is None:
                        vid = ids[clear] = model.clear_value_vid(kind, clear)
                    held = values.get(vid)
                    if held is None:
                        held = values[vid] = ValueDelta(kind, clear, None, base.copy())
                    elif held.last_record < event_first:
                        self._merge_base(held, base)
                    attrs = field.get("a")
                    if attrs is not None:
                        if attrs_lww and type(attrs) is dict and "attrs" not in held.props:
                            held.props["attrs"] = [order, attrs]  # the common case of _attrs
                        else:
                            self._attrs(event, held, attrs, order)
                else:
                    subject, ct, blind = field.get("sub"), field.get("ct"), field.get("bi")
                    if type(blind) is bytes and len(blind) == BLIND_INDEX_BYTES and type(subject) is bytes \
                            and len(subject) == SUBJECT_ID_BYTES and type(ct) is bytes:
                        vid = model.blind_value_vid(kind, blind)  # the common case of _protected
                    else:
                        found = self._protected(event, field, column, kind, sealed)
                        if found is None:
                            continue
                        vid = found
                    held = values.get(vid)
                    if held is None:
                        held = values[vid] = ValueDelta(kind, None, blind, base.copy())
                    elif held.last_record < event_first:
                        self._merge_base(held, base)
                    if ct is not None:
                        seal = [[subject, ct]]
                        seals = held.props.get("seals")
                        held.props["seals"] = seal if seals is None else merge_seals(seals, seal)
                pairs.append((vid, fk))
                if held.last_record != record_no:
                    held.last_record = record_no
                    held.sightings += 1
                if rank < best:
                    best, entity = rank, vid
            key = (dump, part, position)
            sighting = SightingDelta(ms, entity, pairs, sealed)
            if key in sightings:
                _merge_sighting(sightings[key], sighting, values)
            else:
                sightings[key] = sighting
        self._record_no = record_no
        delta.records += len(records)

    def _base_cells(self, ms: int, order: bytes) -> dict[str, Any]:
        rules = self.rules
        rank = rules.rank(None)
        return {prop: lift(rules.rule(model.VALUE, prop), ms, order, rank) for prop in _BASE_PROPS}

    def _merge_base(self, held: ValueDelta, base: Mapping[str, Any]) -> None:
        props = held.props
        for prop, cell in base.items():
            old = props.get(prop)
            props[prop] = cell if old is None else merge(self._base_rules[prop], old, cell)

    def _column(self, event: Event, dump: bytes, column: object, kind: object,
                cache: dict[str, _Column]) -> _Column:
        """What every field of one column of one event shares (validated once)."""
        if type(column) is not str or type(kind) is not str or len(kind) > KIND_CHARS_MAX \
                or len(column) > COLUMN_CHARS_MAX:
            raise PayloadError(f"{where(event)}: a field needs 'col' and 'kind' strings "
                               f"(at most {COLUMN_CHARS_MAX} and {KIND_CHARS_MAX} characters)")
        fk = (dump, column, kind)
        self.delta.fields.add(fk)
        ids = self._clear_ids.get(kind)
        if ids is None:
            ids = self._clear_ids[kind] = {}
        plan = cache[column] = (fk, kind, ids, _PERSON_RANK.get(kind, _NO_RANK))
        return plan

    def _protected(self, event: Event, field: Mapping[str, Any], column: str, kind: str,
                   sealed: list[SealedField]) -> bytes | None:
        """A personal field: its value id by blind index (None: sealed only, not joinable)."""
        subject, ct, blind = field.get("sub"), field.get("ct"), field.get("bi")
        if subject is not None and (type(subject) is not bytes or len(subject) != SUBJECT_ID_BYTES):
            _check_bin(subject, SUBJECT_ID_BYTES, "sub", event)
        if ct is not None and (type(ct) is not bytes or subject is None):
            raise PayloadError(f"{where(event)}: field {column!r}: 'ct' must be binary, with 'sub'")
        if blind is None:
            if ct is not None and subject is not None:
                sealed.append((column, kind, subject, ct))
            return None  # sealed only, or shredded before it was ingested
        if type(blind) is not bytes or len(blind) != BLIND_INDEX_BYTES:
            _check_bin(blind, BLIND_INDEX_BYTES, "bi", event)
        return model.blind_value_vid(kind, blind)

    def _attrs(self, event: Event, held: ValueDelta, attrs: object, order: bytes) -> None:
        if type(attrs) is not dict:
            raise PayloadError(f"{where(event)}: derived attributes 'a' must be a map")
        rule = self._attrs_rule
        cell = [order, attrs] if rule is Rule.LWW else lift(rule, attrs, order, self.rules.rank(None))
        old = held.props.get("attrs")
        if old is None:
            held.props["attrs"] = cell
        elif rule is Rule.LWW and old[0] is not order:
            held.props["attrs"] = merge(rule, old, cell)  # another event: never the same cell
        elif not same(old, cell):  # a value met again in one event: usually the same attrs
            held.props["attrs"] = merge(rule, old, cell)

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
        refusal = fold_refusal(kind, value)
        if refusal is not None:
            # Skipped, not a stop: versions before this check accepted such enrichments
            # (`log append`), and a feed is append-only, so stopping at one would keep
            # every later event of that feed out of the graph for ever. The rule is pure,
            # so every site skips the same events; the event adds nothing and is counted
            # as applied. `log append` refuses them up front.
            log.warning("%s: enrichment skipped: %s", where(event), refusal)
            return
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


def _kind_refusal(kind: str) -> str | None:
    if kind in ENRICHABLE_KINDS:
        return None
    named = repr(kind) if kind in KINDS else "not an indicator kind"
    return (f"'kind' ({named}) must be one of {', '.join(ENRICHABLE_KINDS)}: an enrichment "
            "is about an indicator, never about a person")


_HEX_DIGITS = frozenset("0123456789abcdef")
_HASH_DIGITS = frozenset({32, 40, 64, 128})


def fold_refusal(kind: str, value: str) -> str | None:
    """What the fold checks of an enrichment's (``kind``, ``value``): its kind, and the
    *shape* of a canonical value of that kind (lower-case hex of a digest's length; an
    address or network as ``ipaddress`` prints it, no zone, no IPv4-mapped form; a name as
    ``normalize.domain.has_canonical_shape`` says). Not the full canonicalizer: its IDNA and Unicode
    tables differ between Python and ``idna`` versions, and sites that fold the same
    events must agree whatever they run. ``log append`` (:func:`enrichment_refusal`)
    writes the full canonical form."""
    refusal = _kind_refusal(kind)
    if refusal is not None:
        return refusal
    if kind == "hash":
        shaped = len(value) in _HASH_DIGITS and set(value) <= _HEX_DIGITS
    elif kind in ("ip", "cidr"):
        shaped = _address_shaped(kind, value)
    else:
        shaped = has_canonical_shape(value)
    return None if shaped else f"'value' is not in canonical {kind} form (docs/canonicalization.md)"


def _address_shaped(kind: str, value: str) -> bool:
    if "%" in value:  # a zone: never canonical
        return False
    if ("/" in value) != (kind == "cidr"):
        return False
    try:
        if kind == "cidr":
            network = ipaddress.ip_network(value)  # strict: host bits set is not a network
            address, printed = network.network_address, str(network)
        else:
            address = ipaddress.ip_address(value)
            printed = str(address)
    except ValueError:
        return False
    mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
    return printed == value and not mapped


def enrichment_refusal(kind: str, value: str) -> str | None:
    """Why ``log append`` must not write an enrichment about (``kind``, ``value``), or None.

    The value must be the canonical form of its kind (a query finds only canonical values,
    so facts on any other spelling could never be seen). The reason never quotes the value;
    it quotes the kind only when the kind is one the normalizer knows (a kind is a short
    identifier, but a mistyped payload could hold anything there).
    """
    refusal = _kind_refusal(kind)
    if refusal is not None:
        return refusal
    result = canonicalize(kind, value)
    if not isinstance(result, Canonical):
        return f"'value' is not a valid {kind} ({result.reason})"
    if result.kind != kind:
        return f"'value' is a {result.kind}, not a {kind}"
    if result.value != value:
        return f"'value' is not the canonical form of its {kind} (see docs/canonicalization.md)"
    return None


def _merge_sighting(held: SightingDelta, new: SightingDelta, values: Mapping[bytes, ValueDelta]) -> None:
    """The same record position twice (a re-ingest under the same dump id): union."""
    counted = {vid for vid, _ in held.values}
    for vid in {vid for vid, _ in new.values} & counted:
        values[vid].sightings -= 1  # one sighting, counted twice
    held.seen_ms = min(held.seen_ms, new.seen_ms)
    held.values.extend(v for v in new.values if v not in held.values)
    held.sealed.extend(s for s in new.sealed if s not in held.sealed)
    if held.entity is None or (new.entity is not None and new.entity < held.entity):
        held.entity = new.entity


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
