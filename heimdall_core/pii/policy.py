"""The PII policy: what happens to each field before its event is written (pure).

A field is described by the source it came from, its column in that source and the
kind the normalizer gave it. The policy maps the kind to an :class:`Action`, and a
per-source column override can change that for one column. The table is validated
once, at start, so a typo fails the daemon's start instead of leaking a column.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from heimdall_core.errors import ConfigError, PiiError

KIND_NAME_BYTES_MAX = 32
"""Longest kind name accepted in a policy (kinds are short identifiers)."""

COLUMN_NAME_BYTES_MAX = 256
"""Longest column name accepted in an override (header cells are short)."""

SOURCE_NAME_BYTES_MAX = 256
"""Longest source name accepted in an override."""


class Action(enum.StrEnum):
    """What the policy does with one field."""

    CLEAR = "clear"
    ENCRYPT = "encrypt"
    BLIND_INDEX = "blind_index"
    ENCRYPT_BLIND_INDEX = "encrypt+blind_index"
    DROP = "drop"

    @property
    def encrypts(self) -> bool:
        return self in (Action.ENCRYPT, Action.ENCRYPT_BLIND_INDEX)

    @property
    def indexes(self) -> bool:
        return self in (Action.BLIND_INDEX, Action.ENCRYPT_BLIND_INDEX)


ALLOWED_ACTIONS = ", ".join(a.value for a in Action)

OTHER_KIND = "other"
"""The kind of a column the normalizer could not classify; it may hold anything."""

SUBJECT_KINDS: tuple[str, ...] = ("email", "username", "phone", "name")
"""Kinds that identify a person, in the order that picks a record's subject."""

SECRET_KINDS = frozenset({"password", "password_hash"})
"""Kinds that are never kept in clear: a configuration that asks for it is refused.

A password hash from a breach dump is usually unsalted and cracks in seconds, so it
is as sensitive as the password itself.
"""

DEFAULT_ACTIONS: Mapping[str, Action] = MappingProxyType(
    {
        "ip": Action.CLEAR,
        "cidr": Action.CLEAR,
        "domain": Action.CLEAR,
        "url": Action.CLEAR,
        "hash": Action.CLEAR,
        **dict.fromkeys(SUBJECT_KINDS, Action.ENCRYPT_BLIND_INDEX),
        "password": Action.DROP,
        "password_hash": Action.BLIND_INDEX,
        # An unclassified column may hold anything, personal data included: keep it
        # recoverable for this site but never in clear; an operator who knows the
        # column is harmless sets a per-source override to `clear`.
        OTHER_KIND: Action.ENCRYPT,
    }
)


class PolicyError(ConfigError):
    """A bad entry of the policy, named by its configuration key (``pii.policy.email``,
    ``pii.overrides.SOURCE.COLUMN``). ``key`` is that key's path under ``pii``, so that the
    configuration can add where the entry came from (its file or environment variable)."""

    def __init__(self, key: tuple[str, ...], problem: str) -> None:
        super().__init__(f"pii.{'.'.join(key)}: {problem}")
        self.key = key


def _parse_action(value: object, key: tuple[str, ...]) -> Action:
    if isinstance(value, str):
        try:
            return Action(value.strip().lower())
        except ValueError:
            pass
    raise PolicyError(key, f"{value!r} is not an action; allowed: {ALLOWED_ACTIONS}")


def _check_name(name: object, what: str, bytes_max: int, key: tuple[str, ...]) -> str:
    if not isinstance(name, str) or not name or len(name.encode()) > bytes_max:
        raise PolicyError(key, f"{what} {name!r} must be a non-empty string of at most {bytes_max} bytes")
    return name


def _check_kind(kind: object) -> str:
    """A field kind of the mapping vocabulary: a typo (``emial``) would otherwise be kept
    as a rule for a kind no field ever has, while the intended kind keeps its default."""
    name = _check_name(kind, "kind", KIND_NAME_BYTES_MAX, ("policy", str(kind)))
    if name not in DEFAULT_ACTIONS:
        raise PolicyError(("policy", name),
                          f"{name!r} is not a field kind; allowed kinds: {', '.join(DEFAULT_ACTIONS)}")
    return name


def _refuse_clear_secret(kind: str, action: Action) -> None:
    if action is Action.CLEAR and kind in SECRET_KINDS:
        allowed = ", ".join(a.value for a in Action if a is not Action.CLEAR)
        raise PolicyError(("policy", kind), f"kind {kind!r} may never be kept in clear; allowed: {allowed}")


@dataclass(frozen=True, slots=True)
class PiiPolicy:
    """Kind → action, with per-source column overrides. Build with :meth:`from_config`."""

    kinds: Mapping[str, Action]
    overrides: Mapping[str, Mapping[str, Action]]

    @classmethod
    def default(cls) -> PiiPolicy:
        return cls.from_config({})

    @classmethod
    def from_config(
        cls,
        mapping: Mapping[str, str],
        overrides: Mapping[str, Mapping[str, str]] | None = None,
    ) -> PiiPolicy:
        """Merge ``mapping`` (kind → action) over the defaults; add column overrides.

        Raises :class:`PolicyError` naming the configuration key and what is allowed.
        """
        kinds = dict(DEFAULT_ACTIONS)
        for kind, value in mapping.items():
            name = _check_kind(kind)
            action = _parse_action(value, ("policy", name))
            _refuse_clear_secret(name, action)
            kinds[name] = action
        parsed: dict[str, Mapping[str, Action]] = {}
        for source, columns in (overrides or {}).items():
            src = _check_name(source, "source", SOURCE_NAME_BYTES_MAX, ("overrides", str(source)))
            if not isinstance(columns, Mapping):
                raise PolicyError(("overrides", src), "expected a table of column = action")
            parsed[src] = MappingProxyType({
                _check_name(col, "column", COLUMN_NAME_BYTES_MAX, ("overrides", src, str(col))):
                    _parse_action(value, ("overrides", src, col))
                for col, value in columns.items()
            })
        return cls(kinds=MappingProxyType(kinds), overrides=MappingProxyType(parsed))

    def action(self, source: str, column: str, kind: str) -> Action:
        """The action for one field; a kind the policy does not name is treated as `other`.

        A column override that would keep a secret kind in clear is refused with
        :class:`PiiError` (the kind is only known once the normalizer ran).
        """
        columns = self.overrides.get(source)
        override = columns.get(column) if columns is not None else None
        if override is not None:
            if override is Action.CLEAR and kind in SECRET_KINDS:
                raise PiiError(
                    f"pii.overrides.{source}.{column}: 'clear' refused for a "
                    f"field of kind {kind!r}; use drop, blind_index or encrypt+blind_index"
                )
            return override
        return self.kind_action(kind)

    def kind_action(self, kind: str) -> Action:
        """The action for ``kind`` when no column override applies (`other` for a kind the
        policy does not name)."""
        action = self.kinds.get(kind)
        return action if action is not None else self.kinds[OTHER_KIND]

    def kind_key(self, kind: str) -> str:
        """The ``pii.policy`` key that decides ``kind``: itself, or `other`."""
        return kind if kind in self.kinds else OTHER_KIND
