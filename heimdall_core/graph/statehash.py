"""The canonical state hash of a projection (pure): equal on every site and back end that
holds the same feeds under the same rules.

A store yields its state as rows of seven sections, each in its natural order (see
:class:`~heimdall_core.graph.model.StateEntry`); this module turns the rows into the
canonical items of docs/graph-model.md ("State hash") and hashes them:

    SHA-256( MAGIC || for each item: uint32 big-endian length || canonical msgpack(item) )

Items, in stream order:

    ["dump", id, dump id, props]
    ["field", id, dump id, column, kind]        then ["field_of", field id, dump vertex id]
    ["value", id, kind, "v" | "bi", value | blind index, props]
    ["subject", id, subject id, props]
    ["sighting", id, dump id, part, position, props]
        then ["in_dump", sighting id, dump vertex id]
        then per value, by value id: ["has_value", sighting id, value id, {"columns": [...]}]
    ["in_field", value id, field id]
    ["entity", id, primary value id] before its first ["includes", entity id, value id]

``props`` is the map of visible property values, keys sorted (the canonical msgpack
rule). Rows out of order or repeated are a back-end bug and raise :class:`GraphError`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

from heimdall_core.errors import GraphError
from heimdall_core.graph import model
from heimdall_core.graph.model import StateEntry
from heimdall_core.graph.rules import RuleSet, canonical_bytes, sort_key

MAGIC = b"heimdall graph state v1\n"
SECTIONS = ("dump", "field", "value", "subject", "sighting", "in_field", "includes")
_LENGTH = struct.Struct(">I")


class StateHasher:
    """Feed it a store's rows in order; ``hexdigest()`` is the state hash."""

    def __init__(self, rules: RuleSet) -> None:
        self._rules = rules
        self._hash = hashlib.sha256(MAGIC)
        self._section_index = 0
        self._last_key: tuple[Any, ...] | None = None
        self._entity: bytes | None = None
        self.items = 0

    def add(self, entry: StateEntry) -> None:
        self._enter(entry.section)
        key = _key(entry.section, entry.row)
        if self._last_key is not None and key <= self._last_key:
            raise GraphError(f"state rows of section {entry.section!r} are out of canonical order "
                             "or repeated (a graph back-end bug)")
        self._last_key = key
        for item in self._items(entry.section, entry.row):
            self._emit(item)

    def add_all(self, entries: Iterable[StateEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def _enter(self, section: str) -> None:
        try:
            index = SECTIONS.index(section)
        except ValueError:
            raise GraphError(f"unknown state section {section!r}") from None
        if index < self._section_index:
            raise GraphError(f"state section {section!r} came after {SECTIONS[self._section_index]!r}")
        if index > self._section_index:
            self._section_index, self._last_key = index, None

    def _emit(self, item: list[Any]) -> None:
        data = canonical_bytes(item)
        self._hash.update(_LENGTH.pack(len(data)))
        self._hash.update(data)
        self.items += 1

    def _props(self, vtype: str, props: Any) -> dict[str, Any]:
        return self._rules.visible_props(vtype, props)

    def _items(self, section: str, row: tuple[Any, ...]) -> list[list[Any]]:
        if section == "dump":
            dump, props = row
            return [["dump", model.dump_vid(dump), dump, self._props(model.DUMP, props)]]
        if section == "field":
            dump, column, kind = row
            fid = model.field_vid(dump, column, kind)
            return [["field", fid, dump, column, kind], ["field_of", fid, model.dump_vid(dump)]]
        if section == "value":
            vid, kind, clear, blind, props = row
            form, ident = (model.CLEAR, clear) if clear is not None else (model.BLIND, blind)
            expected = model.content_id(model.VALUE, kind, form, ident)
            if expected != vid:
                raise GraphError(f"value {vid.hex()} does not match its content (a back-end bug)")
            return [["value", vid, kind, form, ident, self._props(model.VALUE, props)]]
        if section == "subject":
            subject, props = row
            return [["subject", model.subject_vid(subject), subject, self._props(model.SUBJECT, props)]]
        if section == "sighting":
            return self._sighting(row)
        if section == "in_field":
            vid, dump, column, kind = row
            return [["in_field", vid, model.field_vid(dump, column, kind)]]
        primary, member = row
        items: list[list[Any]] = []
        eid = model.entity_vid(primary)
        if primary != self._entity:
            self._entity = primary
            items.append(["entity", eid, primary])
        items.append(["includes", eid, member])
        return items

    def _sighting(self, row: tuple[Any, ...]) -> list[list[Any]]:
        dump, part, position, seen_ms, sealed, values = row
        sid = model.sighting_vid(dump, part, position)
        props: dict[str, Any] = {"seen_ms": seen_ms}
        if sealed:
            props["sealed"] = sorted(([*s] for s in sealed), key=sort_key)
        items = [["sighting", sid, dump, part, position, props], ["in_dump", sid, model.dump_vid(dump)]]
        columns: dict[bytes, set[str]] = {}
        for vid, column in values:
            columns.setdefault(bytes(vid), set()).add(column)
        for vid in sorted(columns):
            items.append(["has_value", sid, vid, {"columns": sorted(columns[vid])}])
        return items


def _key(section: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if section in ("dump", "value", "subject"):
        return (row[0],)
    if section == "sighting":
        return tuple(row[:3])
    return tuple(row)
