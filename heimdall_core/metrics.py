"""Prometheus metrics, declared once at module top (Synapse style).

Labels carry only operator-chosen names (source names, feed ids); never values from
dumps, so no personal data can reach the metrics text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

INGEST_RECORDS = Counter("heimdall_ingest_records", "Records ingested into the log",
                         ["source"], registry=REGISTRY)
INGEST_QUARANTINED = Counter("heimdall_ingest_quarantined_records",
                             "Records quarantined (bad lines or records)", ["source"],
                             registry=REGISTRY)
INGEST_DUMPS = Counter("heimdall_ingest_dumps", "Dumps ingested, by outcome",
                       ["source", "outcome"], registry=REGISTRY)
INGEST_BYTES = Counter("heimdall_ingest_input_bytes", "Raw input bytes read", ["source"],
                       registry=REGISTRY)
LOG_FORKS = Gauge("heimdall_log_forks", "Fork proofs held (feeds that presented two histories)",
                  registry=REGISTRY)
LOG_FEEDS_STOPPED = Gauge("heimdall_log_feeds_stopped", "Feeds stopped by integrity failure or fork",
                          registry=REGISTRY)
LOG_FEED_EVENTS = Gauge("heimdall_log_feed_events", "Events held per feed", ["feed"],
                        registry=REGISTRY)
INGEST_SECONDS = Histogram("heimdall_ingest_seconds", "Wall time of one dump ingest",
                           registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
