"""Choosing and building a graph back end from the settings (the one place that knows them all)."""

from __future__ import annotations

import importlib
from typing import Protocol

from heimdall_core.config import Settings
from heimdall_core.errors import ConfigError
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.store import GraphStore

BACKENDS = ("sqlite", "age")


class _FromSettings(Protocol):
    @classmethod
    def from_settings(cls, settings: Settings, rules: RuleSet) -> GraphStore: ...


def rules_from(settings: Settings) -> RuleSet:
    """The merge rules of ``graph.rules`` and ``graph.provider_priority`` (validated)."""
    return RuleSet.from_config(settings.graph.rules, settings.graph.provider_priority)


def make_store(settings: Settings, backend: str | None = None, rules: RuleSet | None = None) -> GraphStore:
    """An unopened store of ``backend`` (default ``graph.backend``)."""
    name = backend or settings.graph.backend
    rules = rules or rules_from(settings)
    if name == "sqlite":
        from heimdall_core.graph.sqlite import FILE_NAME, SqliteStore

        return SqliteStore(settings.data_dir / FILE_NAME, rules)
    if name == "age":
        try:
            module = importlib.import_module("heimdall_core.graph.age")
        except ModuleNotFoundError as exc:
            if exc.name != "heimdall_core.graph.age":
                raise
            raise ConfigError("graph back end 'age' is not part of this build; use sqlite") from None
        store_class: _FromSettings = module.AgeStore
        return store_class.from_settings(settings, rules)
    raise ConfigError(f"graph back end {name!r} is unknown; use one of: {', '.join(BACKENDS)}")
