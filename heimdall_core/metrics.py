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
# The server's projection (``heimdall serve``). Only the back end is a label: it has two
# values, where a label per feed would grow with every feed a site ever imports.
GRAPH_EVENTS_BEHIND = Gauge("heimdall_graph_events_behind",
                            "Log events the graph did not hold at the projector's last completed pass",
                            ["backend"], registry=REGISTRY)
GRAPH_FEEDS_STOPPED = Gauge("heimdall_graph_feeds_stopped",
                            "Feeds whose projection is stopped at an event this build cannot fold",
                            registry=REGISTRY)
GRAPH_SECONDS_SINCE_PASS = Gauge("heimdall_graph_seconds_since_pass",
                                 "Seconds since the projector's last completed pass (since the "
                                 "start while none has completed)", registry=REGISTRY)
GRAPH_DATABASE_UNAVAILABLE = Gauge("heimdall_graph_database_unavailable",
                                   "1 while the projector waits for the graph database, else 0",
                                   registry=REGISTRY)
GRAPH_PROJECTION_FAILING = Gauge("heimdall_graph_projection_failing",
                                 "1 while projection passes fail for a reason other than the "
                                 "database being away (see the server log), else 0", registry=REGISTRY)
INGEST_SECONDS = Histogram("heimdall_ingest_seconds", "Wall time of one dump ingest",
                           registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
