"""The reference graph store: plain dictionaries in memory (pure, no I/O).

It is the executable definition of what a delta does to the graph: the property tests
fold interleaved feeds through it, and the contract suite checks that the SQLite and AGE
back ends give exactly its answers and its state hash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from heimdall_core.graph import model
from heimdall_core.graph.model import (
    CoValue,
    CoValues,
    Delta,
    GraphCounts,
    SightingKey,
    StateEntry,
    ValueDumps,
    ValueInfo,
)
from heimdall_core.graph.rules import Rule, RuleSet, dump_seen, lift, merge
from heimdall_core.graph.store import (
    CO_VALUES_DEFAULT,
    DUMP_SIGHTINGS_SCANNED_MAX,
    DUMPS_LISTED_MAX,
    SIGHTINGS_SCANNED_MAX,
)


@dataclass(slots=True)
class _Value:
    kind: str
    value: str | None
    blind_index: bytes | None
    props: dict[str, Any]
    sightings: list[SightingKey] = field(default_factory=list)  # in the order first applied


@dataclass(slots=True)
class _Sighting:
    seen_ms: int
    entity: bytes | None
    values: set[tuple[bytes, model.FieldKey]]
    sealed: list[Any]


class MemoryStore:
    """A :class:`~heimdall_core.graph.store.GraphStore` held in dictionaries."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._reset()

    def _reset(self) -> None:
        self._dumps: dict[bytes, dict[str, Any]] = {}
        self._fields: set[model.FieldKey] = set()
        self._values: dict[bytes, _Value] = {}
        self._subjects: dict[bytes, dict[str, Any]] = {}
        self._sightings: dict[SightingKey, _Sighting] = {}
        self._positions: dict[bytes, int] = {}

    @property
    def backend(self) -> str:
        return "memory"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def reset(self) -> None:
        self._reset()

    async def positions(self) -> dict[bytes, int]:
        return dict(self._positions)

    async def apply(self, delta: Delta) -> None:
        rules = self.rules
        for dump, props in delta.dumps.items():
            self._dumps[dump] = rules.merge_props(model.DUMP, self._dumps.get(dump, {}), props)
        self._fields |= delta.fields
        for vid, value in delta.values.items():
            held = self._values.get(vid)
            if held is None:
                self._values[vid] = _Value(value.kind, value.value, value.blind_index, dict(value.props))
            else:
                held.props = rules.merge_props(model.VALUE, held.props, value.props)
        for subject, props in delta.subjects.items():
            self._subjects[subject] = rules.merge_props(model.SUBJECT, self._subjects.get(subject, {}), props)
        for key, sighting in delta.sightings.items():
            self._apply_sighting(key, sighting)
        for feed, seq in delta.positions.items():
            self._positions[feed] = max(seq, self._positions.get(feed, 0))

    def _apply_sighting(self, key: SightingKey, new: model.SightingDelta) -> None:
        sealed = lift(Rule.UNION, [list(s) for s in new.sealed], b"", 0)
        held = self._sightings.get(key)
        if held is None:
            held = self._sightings[key] = _Sighting(new.seen_ms, new.entity, set(), sealed)
        else:
            held.seen_ms = min(held.seen_ms, new.seen_ms)
            held.sealed = merge(Rule.UNION, held.sealed, sealed)
            if held.entity is None or (new.entity is not None and new.entity < held.entity):
                held.entity = new.entity
        known = {vid for vid, _ in held.values}
        for item in new.values:
            held.values.add(item)
            if item[0] not in known:
                known.add(item[0])
                self._values[item[0]].sightings.append(key)

    # --- state -------------------------------------------------------------------------------

    async def iter_state(self) -> AsyncIterator[StateEntry]:
        for entry in self._state():
            yield entry

    def _state(self) -> list[StateEntry]:
        out = [StateEntry("dump", (d, self._dumps[d])) for d in sorted(self._dumps)]
        out += [StateEntry("field", f) for f in sorted(self._fields)]
        out += [StateEntry("value", (vid, v.kind, v.value, v.blind_index, v.props))
                for vid, v in sorted(self._values.items())]
        out += [StateEntry("subject", (s, self._subjects[s])) for s in sorted(self._subjects)]
        in_field: set[tuple[bytes, bytes, str, str]] = set()
        includes: set[tuple[bytes, bytes]] = set()
        for key in sorted(self._sightings):
            s = self._sightings[key]
            out.append(StateEntry("sighting", (*key, s.seen_ms, s.sealed,
                                               [(vid, fk[1]) for vid, fk in s.values])))
            for vid, fk in s.values:
                in_field.add((vid, *fk))
                if s.entity is not None:
                    includes.add((s.entity, vid))
        out += [StateEntry("in_field", row) for row in sorted(in_field)]
        out += [StateEntry("includes", row) for row in sorted(includes)]
        return out

    # --- queries ---------------------------------------------------------------------------

    def _info(self, vid: bytes, v: _Value) -> ValueInfo:
        subs = {bytes(sub) for sub, _ in v.props.get("seals", [])}
        shredded = frozenset(sub for sub in subs if sub in self._subjects)
        return ValueInfo(vid, v.kind, v.value, v.blind_index, dict(v.props), shredded, len(v.sightings))

    async def value(self, vid: bytes) -> ValueInfo | None:
        held = self._values.get(vid)
        return None if held is None else self._info(vid, held)

    async def values(self, vids: Sequence[bytes]) -> dict[bytes, ValueInfo]:
        return {vid: self._info(vid, self._values[vid]) for vid in vids if vid in self._values}

    async def value_dumps(self, vid: bytes, limit: int = DUMPS_LISTED_MAX,
                          sightings_max: int = DUMP_SIGHTINGS_SCANNED_MAX) -> ValueDumps:
        held = self._values.get(vid)
        if held is None:
            return ValueDumps.ranked((), limit)
        per_dump: dict[bytes, list[int]] = {}
        for key in held.sightings[max(0, len(held.sightings) - sightings_max):]:  # the newest
            per_dump.setdefault(key[0], []).append(self._sightings[key].seen_ms)
        out = [dump_seen(self.rules, dump, self._dumps.get(dump, {}), len(times), min(times), max(times))
               for dump, times in per_dump.items()]
        return ValueDumps.ranked(out, limit)

    async def co_values(self, vid: bytes, limit: int = CO_VALUES_DEFAULT,
                        sightings_max: int = SIGHTINGS_SCANNED_MAX,
                        skip_dumps: Sequence[bytes] = ()) -> CoValues:
        held = self._values.get(vid)
        if held is None:
            return CoValues((), 0, True)
        skip = frozenset(skip_dumps)
        counted = [key for key in held.sightings if key[0] not in skip]
        keys = counted[-sightings_max:]
        counts: dict[bytes, int] = {}
        for key in keys:
            for other in {v for v, _ in self._sightings[key].values}:
                if other != vid:
                    counts[other] = counts.get(other, 0) + 1
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
        items = tuple(CoValue(self._info(other, self._values[other]), n) for other, n in ranked)
        return CoValues(items, len(keys), len(keys) == len(counted))

    async def counts(self) -> GraphCounts:
        return GraphCounts(len(self._dumps), len(self._fields), len(self._values),
                           len(self._sightings), len(self._subjects), len(self._positions))
