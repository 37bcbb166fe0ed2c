"""Heimdall core: everything a single site needs (log, ingest, PII, graph, CLI)."""

__version__ = "0.1.0"
