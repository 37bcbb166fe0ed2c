"""The one interface every graph back end implements (embedded SQLite, PostgreSQL + AGE).

The projector does the thinking in pure Python (:mod:`heimdall_core.graph.fold`) and hands
a store one :class:`~heimdall_core.graph.model.Delta` per transaction; the store merges
the delta's cells with what it holds using the :class:`~heimdall_core.graph.rules.RuleSet`
it was opened with, and writes the feed positions of the delta in the same transaction.
Queries go through a handful of read methods whose answers are plain values, so the
query layer, the CLI and the HTTP API never see a dialect.

Contract (tests/graph_contract.py runs it against every back end):

* ``apply`` is atomic: after a crash either all of a delta (effects and positions) is
  visible or none of it. Applying the same delta twice leaves the same state as once.
  A feed's position only moves forward (the greater of the held and the new one).
* The state after applying deltas equals the state after applying their merge, in any
  order and grouping: ``iter_state`` yields the same entries.
* A store that cannot reach its database raises :class:`DatabaseUnavailable` (the
  projector waits, reopens and retries); any other failure is a :class:`GraphError`.
* A store opened with rules whose fingerprint differs from the ones its projection was
  built with refuses (``GraphError`` telling the operator to run ``heimdall replay``),
  unless it is empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from heimdall_core.graph.model import CoValues, Delta, GraphCounts, StateEntry, ValueDumps, ValueInfo

CO_VALUES_DEFAULT = 20
"""Co-occurring values listed by default."""

SIGHTINGS_SCANNED_MAX = 5_000
"""Most sightings of one value read to count co-occurring values (keeps a query of a value
seen a million times under its latency budget; the answer says when it is partial)."""

DUMPS_LISTED_MAX = 1_000
"""Most dumps listed for one value."""

DUMP_SIGHTINGS_SCANNED_MAX = 250_000
"""Most sightings of one value read to find the dumps it was seen in. A query reads them
all to count records per dump (~1.2 us a sighting on SQLite, measured: 0.35 s for a
domain in 300,000 records), so a value in tens of millions of records (a webmail domain
in a big breach dump) would hold a query, and the API's reader, for a minute; past this
the dumps are counted over the newest sightings and the answer says so."""


@runtime_checkable
class GraphStore(Protocol):
    """A graph back end. Open it, use it from one task at a time, close it."""

    @property
    def backend(self) -> str:
        """``sqlite``, ``age``, ``memory``."""
        ...

    async def open(self) -> None:
        """Connect and create or migrate the schema; check the rules fingerprint."""
        ...

    async def close(self) -> None:
        ...

    async def reset(self) -> None:
        """Remove every vertex, edge and position (``replay`` starts from nothing)."""
        ...

    async def positions(self) -> dict[bytes, int]:
        """Feed id -> the sequence number of the next event to apply."""
        ...

    async def apply(self, delta: Delta) -> None:
        """Merge a delta and write its positions, in one transaction."""
        ...

    def iter_state(self) -> AsyncIterator[StateEntry]:
        """Every vertex and edge in canonical order (see statehash.SECTIONS), for the hash."""
        ...

    async def value(self, vid: bytes) -> ValueInfo | None:
        """A value vertex by id, or None if never seen."""
        ...

    async def values(self, vids: Sequence[bytes]) -> dict[bytes, ValueInfo]:
        """Several value vertices by id (those not held are left out)."""
        ...

    async def value_dumps(self, vid: bytes, limit: int = DUMPS_LISTED_MAX,
                          sightings_max: int = DUMP_SIGHTINGS_SCANNED_MAX) -> ValueDumps:
        """The dumps a value was seen in, most sightings first (ties: dump id): the first
        ``limit`` listed, with how many there are in all and the repeat uploads among all
        of them (not only the listed ones), counted over the value's ``sightings_max``
        newest sightings (the same newest-first order as :meth:`co_values`); the answer's
        ``sightings_scanned`` says how many were read."""
        ...

    async def co_values(self, vid: bytes, limit: int = CO_VALUES_DEFAULT,
                        sightings_max: int = SIGHTINGS_SCANNED_MAX,
                        skip_dumps: Sequence[bytes] = ()) -> CoValues:
        """Values that share records with ``vid``, most shared records first (ties: id).

        Reads the ``sightings_max`` most recent sightings (highest dump id, part, position
        order is not meaningful; back ends use their newest-first insertion order) and says
        whether that was all of them. Sightings in ``skip_dumps`` (repeat uploads: the same
        records again) are neither read nor counted.
        """
        ...

    async def counts(self) -> GraphCounts:
        ...


@runtime_checkable
class OverlappingApply(Protocol):
    """Optional for a :class:`GraphStore`: applies that overlap.

    Once :meth:`apply_built` returned, ``apply`` may be called again before the apply in
    flight has finished. The later batch does its lookups and builds its rows meanwhile but
    writes nothing until the earlier one committed, and fails without writing if it
    failed; so batches still commit one at a time, in order. A store without this method
    gets one ``apply`` at a time.
    """

    async def apply_built(self) -> None:
        """Wait until the apply in flight (if any) has no Python work left but its commit."""
        ...
