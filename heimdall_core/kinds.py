"""The registry of event kinds and schema versions this build understands.

The projector stops a feed at an event whose (kind, version) is not listed here,
rather than skipping it silently; `heimdall log append` only writes listed kinds.
"""

from __future__ import annotations

NOTE = ("note", 1)  # free-form operator/test annotation; no effect on the graph
FEED_ANNOUNCED = ("feed.announced", 1)  # a further own feed (ingest worker) and its key
DUMP_STARTED = ("dump.started", 1)
RECORDS_INGESTED = ("records.ingested", 1)
DUMP_FINISHED = ("dump.finished", 1)
SUBJECT_SHREDDED = ("subject.shredded", 1)
ENRICHMENT_RECEIVED = ("enrichment.received", 1)

KNOWN: frozenset[tuple[str, int]] = frozenset({
    NOTE, FEED_ANNOUNCED, DUMP_STARTED, RECORDS_INGESTED, DUMP_FINISHED, SUBJECT_SHREDDED,
    ENRICHMENT_RECEIVED,
})
KIND_NAMES: frozenset[str] = frozenset(kind for kind, _ in KNOWN)

DUMP_ID_BYTES = 16
"""A dump id (``dump``, ``duplicate_of`` in the dump events): 16 random bytes."""


def latest_version(kind: str) -> int | None:
    versions = [version for name, version in KNOWN if name == kind]
    return max(versions) if versions else None
