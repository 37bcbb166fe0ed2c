"""Merge rules: how contributions to one property combine, whatever their order (pure).

Every contribution is *lifted* into a cell, and cells are *merged* with a join: the
merge is commutative, associative and idempotent by construction (a maximum or minimum
over a total order, or a set union), so every site that holds the same events holds the
same cells, in whatever order it applied them, and applying an event twice changes
nothing. The visible value of a property is read from its cell.

    rule      cell (plain msgpack data)        merge                      visible
    lww       [order, value]                   max by (order, value)      value
    min       value                            least value                value
    max       value                            greatest value             value
    union     [element, ...] sorted            set union                  the elements
    count     [event id, ...] sorted           set union                  how many events
    priority  [rank, order, value]             least rank, then lww       value
    seals     [[subject, ct], ...] by subject  per subject: least ct      the pairs (internal)

``order`` is the event's place in the total order: HLC physical ms (8 bytes, big-endian),
HLC logical (4), feed id (32), sequence (8); compared bytewise. ``rank`` is the position of
the contribution's provider in ``graph.provider_priority`` (unlisted providers rank after
every listed one). Values compare by type (bool < int < str < bytes < list < map), then
numerically, by code point, bytewise, or element by element.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgpack

from heimdall_core.errors import ConfigError, GraphError
from heimdall_core.events import canonical
from heimdall_core.graph import model

ORDER = struct.Struct(">QI32sQ")
ORDER_BYTES = ORDER.size  # 52
EVENT_ID_OFFSET = 12  # feed id + sequence: the event's identity inside an order key
FACT_NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}\Z")
FACT_PREFIX = "fact."
ANY_FACT = "*"


class Rule(enum.StrEnum):
    LWW = "lww"
    MIN = "min"
    MAX = "max"
    UNION = "union"
    COUNT = "count"
    PRIORITY = "priority"
    SEALS = "seals"  # internal: one sealed copy per subject; not configurable


CONFIGURABLE_RULES = (Rule.LWW, Rule.MIN, Rule.MAX, Rule.UNION, Rule.COUNT, Rule.PRIORITY)
ALLOWED_RULES = ", ".join(r.value for r in CONFIGURABLE_RULES)

DUMP_PROPS = ("source", "name", "format", "compression", "sha256", "bytes", "columns",
              "mapping", "parts", "meta", "records", "quarantined", "duplicate_of",
              "started_ms", "finished_ms")

DEFAULT_RULES: Mapping[str, Mapping[str, Rule]] = MappingProxyType({
    "dump": MappingProxyType({
        **dict.fromkeys(DUMP_PROPS, Rule.LWW),
        "started_ms": Rule.MIN,
        "finished_ms": Rule.MAX,
    }),
    "value": MappingProxyType({
        "first_seen_ms": Rule.MIN,
        "last_seen_ms": Rule.MAX,
        "attrs": Rule.LWW,
    }),
    # Enrichment facts land on the value they describe as properties "fact.<name>".
    "fact": MappingProxyType({ANY_FACT: Rule.PRIORITY}),
})
"""The configurable properties and their default rules (``graph.rules`` overrides them)."""

FIXED_RULES: Mapping[tuple[str, str], Rule] = MappingProxyType({
    ("value", "seals"): Rule.SEALS,
    ("value", "enriched_by"): Rule.UNION,
    ("value", "enriched_ms"): Rule.MAX,
    ("subject", "shredded_ms"): Rule.MIN,
    ("sighting", "seen_ms"): Rule.MIN,
    ("sighting", "sealed"): Rule.UNION,
})
"""Structural properties whose rule is part of the model, not configuration."""


def order_key(physical_ms: int, logical: int, feed: bytes, seq: int) -> bytes:
    """An event's place in the total order (HLC, feed id, sequence), comparable bytewise."""
    return ORDER.pack(physical_ms, logical, feed, seq)


# --- comparing and encoding values ----------------------------------------------------


def sort_key(value: Any) -> tuple[Any, ...]:
    """A key that orders any property value the same way on every site."""
    kind = type(value)
    if value is None:
        return (0,)
    if kind is bool:
        return (1, int(value))
    if kind is int:
        return (2, value)
    if kind is str:
        return (3, value)
    if kind is bytes:
        return (4, value)
    if kind is list or kind is tuple:
        return (5, tuple(sort_key(item) for item in value))
    if isinstance(value, Mapping):
        return (6, tuple((key, sort_key(value[key])) for key in sorted(value)))
    raise GraphError(f"property value of type {kind.__name__} cannot be merged")


def canonical_bytes(value: Any) -> bytes:
    """Canonical msgpack of a value (maps sorted by key): its identity for ties and hashing."""
    packed: bytes = msgpack.packb(canonical(value), use_bin_type=True)
    return packed


def plain(value: Any) -> Any:
    """Tuples as lists and maps as plain dicts, as they come back from msgpack storage."""
    kind = type(value)
    if kind is tuple or kind is list:
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain(value[key]) for key in sorted(value)}
    return value


# --- lift, merge, read ----------------------------------------------------------------


def lift(rule: Rule, value: Any, order: bytes, rank: int) -> Any:
    """The cell of one contribution of ``value`` by the event at ``order``."""
    if rule is Rule.LWW:
        return [order, plain(value)]
    if rule is Rule.MIN or rule is Rule.MAX:
        return plain(value)
    if rule is Rule.UNION:
        items = value if isinstance(value, list | tuple) else [value]
        return _sorted_unique(plain(item) for item in items)
    if rule is Rule.COUNT:
        return [order[EVENT_ID_OFFSET:]]
    if rule is Rule.PRIORITY:
        return [rank, order, plain(value)]
    if rule is Rule.SEALS:
        return merge_seals([], value)
    raise AssertionError(f"rule {rule} not handled")


def merge(rule: Rule, a: Any, b: Any) -> Any:
    """The join of two cells of the same rule."""
    if rule is Rule.MIN or rule is Rule.MAX:
        if type(a) is int and type(b) is int:  # the hot case: times in ms
            return (a if a <= b else b) if rule is Rule.MIN else (a if a >= b else b)
        if rule is Rule.MIN:
            return a if sort_key(a) <= sort_key(b) else b
        return a if sort_key(a) >= sort_key(b) else b
    if rule is Rule.LWW:
        if a[0] != b[0]:  # orders differ unless both come from one event
            return a if bytes(a[0]) > bytes(b[0]) else b
        return a if _lww_key(a) >= _lww_key(b) else b
    if rule is Rule.UNION or rule is Rule.COUNT:
        return _sorted_unique([*a, *b])
    if rule is Rule.PRIORITY:
        return a if _priority_key(a) >= _priority_key(b) else b
    if rule is Rule.SEALS:
        return merge_seals(a, b)
    raise AssertionError(f"rule {rule} not handled")


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``0 == False`` in Python, not here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    return bool(a == b)


def visible(rule: Rule, cell: Any) -> Any:
    """What a reader sees of a property."""
    if rule is Rule.LWW:
        return cell[1]
    if rule is Rule.PRIORITY:
        return cell[2]
    if rule is Rule.COUNT:
        return len(cell)
    return cell


def merge_seals(a: Iterable[Any], b: Iterable[Any]) -> list[list[bytes]]:
    """Per subject, keep the least ciphertext: any one copy decrypts the same value."""
    best: dict[bytes, bytes] = {}
    for subject, ct in (*a, *b):
        subject, ct = bytes(subject), bytes(ct)
        held = best.get(subject)
        if held is None or ct < held:
            best[subject] = ct
    return [[subject, best[subject]] for subject in sorted(best)]


def _lww_key(cell: Any) -> tuple[bytes, bytes]:
    return bytes(cell[0]), canonical_bytes(cell[1])


def _priority_key(cell: Any) -> tuple[int, bytes, bytes]:
    return -int(cell[0]), bytes(cell[1]), canonical_bytes(cell[2])


def _sorted_unique(items: Iterable[Any]) -> list[Any]:
    unique = {canonical_bytes(item): item for item in items}
    return sorted(unique.values(), key=sort_key)


# --- the rule set -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Which rule each property follows, and the provider order for ``priority``."""

    table: Mapping[str, Mapping[str, Rule]]
    providers: tuple[str, ...] = ()

    @classmethod
    def default(cls) -> RuleSet:
        return cls.from_config({}, ())

    @classmethod
    def from_config(cls, rules: Mapping[str, Mapping[str, str]],
                    provider_priority: Iterable[str]) -> RuleSet:
        """Overlay ``graph.rules`` on the defaults; :class:`ConfigError` names the bad key."""
        table = {vtype: dict(props) for vtype, props in DEFAULT_RULES.items()}
        for vtype, props in rules.items():
            if vtype not in table:
                raise ConfigError(f"graph.rules.{vtype}: unknown vertex type; configurable: "
                                  f"{', '.join(sorted(table))}")
            if not isinstance(props, Mapping):
                raise ConfigError(f"graph.rules.{vtype}: expected a table of property = rule")
            for prop, name in props.items():
                _check_property(vtype, prop, table[vtype])
                table[vtype][prop] = _parse_rule(f"graph.rules.{vtype}.{prop}", name)
        providers = tuple(provider_priority)
        if len(set(providers)) != len(providers):
            raise ConfigError("graph.provider_priority: a provider is listed twice")
        frozen = {vtype: MappingProxyType(props) for vtype, props in table.items()}
        return cls(MappingProxyType(frozen), providers)

    def rule(self, vtype: str, prop: str) -> Rule:
        fixed = FIXED_RULES.get((vtype, prop))
        if fixed is not None:
            return fixed
        if vtype == "value" and prop.startswith(FACT_PREFIX):
            facts = self.table["fact"]
            return facts.get(prop[len(FACT_PREFIX):], facts[ANY_FACT])
        try:
            return self.table[vtype][prop]
        except KeyError:
            raise GraphError(f"no merge rule for property {prop!r} of {vtype} vertices") from None

    def rank(self, provider: str | None) -> int:
        """Position of ``provider`` in the priority list; unlisted ones rank after all listed."""
        if provider is not None:
            try:
                return self.providers.index(provider)
            except ValueError:
                pass
        return len(self.providers)

    def merge_props(self, vtype: str, held: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
        """``held`` with every cell of ``new`` merged in (a new dict)."""
        out = dict(held)
        for prop, cell in new.items():
            old = out.get(prop)
            out[prop] = cell if old is None else merge(self.rule(vtype, prop), old, cell)
        return out

    def visible_props(self, vtype: str, props: Mapping[str, Any]) -> dict[str, Any]:
        return {prop: visible(self.rule(vtype, prop), props[prop]) for prop in sorted(props)}

    def fingerprint(self) -> str:
        """Hex digest of the effective rules: a projection built under other rules must be
        rebuilt (the cells hold ranks and choices made under the old ones)."""
        plain_table = {vtype: {prop: str(rule) for prop, rule in props.items()}
                       for vtype, props in self.table.items()}
        return hashlib.sha256(canonical_bytes([plain_table, list(self.providers)])).hexdigest()


def _check_property(vtype: str, prop: str, known: Mapping[str, Rule]) -> None:
    if vtype == "fact":
        if prop != ANY_FACT and not FACT_NAME_RE.match(prop):
            raise ConfigError(f"graph.rules.fact.{prop}: a fact name is lower-case letters, digits, "
                              "'_', '.', '-' (or '*' for every fact not named)")
        return
    if prop not in known:
        raise ConfigError(f"graph.rules.{vtype}.{prop}: unknown property; configurable for {vtype}: "
                          f"{', '.join(sorted(known))}")


def _parse_rule(key: str, name: object) -> Rule:
    if isinstance(name, str):
        try:
            rule = Rule(name.strip().lower())
        except ValueError:
            pass
        else:
            if rule in CONFIGURABLE_RULES:
                return rule
    raise ConfigError(f"{key}: {name!r} is not a merge rule; allowed: {ALLOWED_RULES}")


def dump_seen(rules: RuleSet, dump: bytes, cells: Mapping[str, Any], sightings: int, first_ms: int,
              last_ms: int) -> model.DumpSeen:
    """Where a value was seen, for answers, from one dump's stored cells (every back end)."""
    repeat = cells.get("duplicate_of")
    duplicate_of = visible(rules.rule(model.DUMP, "duplicate_of"), repeat) if repeat is not None else None
    return model.DumpSeen(dump, dump_text(rules, cells, "source"), dump_text(rules, cells, "name"),
                          sightings, first_ms, last_ms,
                          bytes(duplicate_of) if isinstance(duplicate_of, bytes | bytearray) else None)


def dump_text(rules: RuleSet, cells: Mapping[str, Any], prop: str) -> str | None:
    """A dump's property as text for answers (source, name), as its rule shows it."""
    cell = cells.get(prop)
    if cell is None:
        return None
    shown = visible(rules.rule(model.DUMP, prop), cell)
    return shown if isinstance(shown, str) else str(shown)
