"""Typed configuration, validated once at start.

Layers, lowest first: built-in defaults < TOML file (``--config`` or ``HMD_CONFIG``) <
environment variables.

Environment nesting rule: ``HMD_`` + the dotted key path in upper case with ``__``
between levels. ``data_dir`` is ``HMD_DATA_DIR``; ``log.fsync`` is ``HMD_LOG__FSYNC``;
``pii.policy.email`` is ``HMD_PII__POLICY__EMAIL``. Lists are comma-separated. Names
are lower-cased, so map keys set from the environment are lower case. Variables that
start with a reserved prefix (``HMD_CONFIG``, ``HMD_PG_``, ``HMD_TEST_``) belong to
tools and tests, not to the configuration, and are ignored here.

Any unknown key, wrong type or bad value stops the program with one line naming the
key, the value, what is allowed and where the value came from: ``(in FILE)`` or
``(from HMD_...)`` (``ConfigError``). Secrets are marked in the schema
and redacted by :func:`redacted` and in every error message; the value of an unknown
key is shown only when it cannot be a mistyped secret.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from heimdall_core.errors import ConfigError
from heimdall_core.pgdsn import dsn_problem
from heimdall_core.pii.policy import PiiPolicy, PolicyError
from heimdall_core.units import parse_duration_s, parse_size_bytes

ENV_PREFIX = "HMD_"
ENV_CONFIG_FILE = "HMD_CONFIG"
ENV_RESERVED_PREFIXES = (ENV_CONFIG_FILE, "HMD_PG_", "HMD_TEST_")
REDACTED = "<redacted>"
# Words in a key name that mark a value we must not echo even when the key is unknown
# (a mistyped 'postgres_dsn' is still a DSN with a password in it).
_SECRET_HINTS = ("dsn", "password", "passwd", "secret", "token", "key", "credential", "auth",
                 "postgres")
_SHOWN_CHARS_MAX = 60

# Field metadata keys.
_SIZE = "size"  # int parsed from "64MiB"
_DURATION = "duration"  # float seconds parsed from "30s"
_SECRET = "secret"  # noqa: S105 - a metadata key, not a password
_MIN = "min"
_MAX = "max"


def _meta(
    *, size: bool = False, duration: bool = False, secret: bool = False,
    min_value: float | None = None, max_value: float | None = None, doc: str = "",
) -> dict[str, Any]:
    return {_SIZE: size, _DURATION: duration, _SECRET: secret, _MIN: min_value,
            _MAX: max_value, "doc": doc}


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "heimdall"


@dataclass(frozen=True, slots=True)
class LogSettings:
    fsync: bool = field(default=True, metadata=_meta(
        doc="fsync segments and heads before acknowledging (turn off only for throwaway tests)"))
    segment_bytes_max: int = field(default=64 << 20, metadata=_meta(
        size=True, min_value=64 << 10, max_value=1 << 32, doc="roll to a new segment file after this"))
    frame_bytes_max: int = field(default=1 << 20, metadata=_meta(
        size=True, min_value=1024, max_value=16 << 20, doc="largest single event frame"))
    batch_events_max: int = field(default=10_000, metadata=_meta(
        min_value=1, max_value=1_000_000, doc="events per signed checkpoint at most"))
    group_commit_delay_s: float = field(default=0.0, metadata=_meta(
        duration=True, min_value=0.0, max_value=1.0,
        doc="extra wait to gather concurrent appends into one fsync"))


@dataclass(frozen=True, slots=True)
class IngestSettings:
    line_bytes_max: int = field(default=1 << 20, metadata=_meta(
        size=True, min_value=1024, max_value=256 << 20, doc="longer lines are quarantined"))
    chunk_bytes: int = field(default=1 << 20, metadata=_meta(
        size=True, min_value=4096, max_value=64 << 20, doc="read size for input files"))
    batch_records: int = field(default=5_000, metadata=_meta(
        min_value=1, max_value=100_000, doc="records per event batch"))
    workers: int = field(default=1, metadata=_meta(min_value=1, max_value=64))
    body_bytes_max: int = field(default=10 << 30, metadata=_meta(
        size=True, min_value=1024, doc="largest dump accepted by POST /v1/dumps"))


@dataclass(frozen=True, slots=True)
class NormalizeSettings:
    email_keep_local_case: bool = False
    email_fold_dots_domains: tuple[str, ...] = ()
    email_strip_plus_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PiiSettings:
    policy: dict[str, str] = field(default_factory=dict, metadata=_meta(
        doc="field kind -> clear|encrypt|blind_index|encrypt+blind_index|drop (overrides defaults)"))
    overrides: dict[str, dict[str, str]] = field(default_factory=dict, metadata=_meta(
        doc="source -> column -> action"))
    allow_passwords: bool = False


@dataclass(frozen=True, slots=True)
class GraphSettings:
    backend: Literal["sqlite", "age"] = "sqlite"
    postgres_dsn: str = field(default="", metadata=_meta(
        secret=True, doc="PostgreSQL DSN for the age back end; empty: the one from start-db"))
    age_graph: str = "heimdall"
    batch_events: int = field(default=5_000, metadata=_meta(min_value=1, max_value=200_000))
    batch_records: int = field(default=50_000, metadata=_meta(
        min_value=100, max_value=200_000,
        doc="ingest records per projection transaction: ~10 KB of memory each while projecting"))
    rules: dict[str, dict[str, str]] = field(default_factory=dict, metadata=_meta(
        doc="vertex type -> property -> merge rule (lww|min|max|union|count|priority)"))
    provider_priority: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = field(default=8740, metadata=_meta(min_value=1, max_value=65535))


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = field(default_factory=_default_data_dir)
    site_name: str = "heimdall"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log: LogSettings = field(default_factory=LogSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    normalize: NormalizeSettings = field(default_factory=NormalizeSettings)
    pii: PiiSettings = field(default_factory=PiiSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    api: ApiSettings = field(default_factory=ApiSettings)


def load(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings from defaults, the TOML file and the environment."""
    env = os.environ if environ is None else environ
    layered: dict[str, Any] = {}
    path = config_file or (Path(env[ENV_CONFIG_FILE]) if env.get(ENV_CONFIG_FILE) else None)
    if path is not None:
        layered = _read_toml(path)
    _merge(layered, _env_layer(env))
    settings: Settings = _build(Settings, layered, "", path)
    graph = layered.get("graph")
    raw_dsn = graph.get("postgres_dsn") if isinstance(graph, Mapping) else None
    _check_postgres_dsn(settings.graph.postgres_dsn, _origin(raw_dsn, path))
    _check_pii_policy(settings.pii, layered.get("pii"), path)
    return settings


def _check_pii_policy(pii: PiiSettings, raw: Any, config_file: Path | None) -> None:
    """At load, like every other setting, so that a bad action or kind says where it came
    from (the policy itself knows only its key) and fails ``config show``, not an ingest."""
    try:
        PiiPolicy.from_config(pii.policy, pii.overrides)
    except PolicyError as exc:
        entry = raw
        for part in exc.key:
            entry = entry.get(part) if isinstance(entry, Mapping) else None
        raise _located(exc, entry, config_file) from None


def _check_postgres_dsn(dsn: str, origin: str) -> None:
    """At start, not at the first connection: a DSN the driver cannot parse would otherwise
    fail later, inside a request or the projector, in the driver's words (which may quote it)."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise ConfigError(f"graph.postgres_dsn = {REDACTED}: {problem} {origin}".rstrip())


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read: {exc.strerror}") from None


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_RESERVED_PREFIXES):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if any(not part for part in parts):
            raise ConfigError(f"environment {name}: empty level; nest with '__' (e.g. HMD_LOG__FSYNC)")
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {name}: {part!r} is a value, not a section")
        node[parts[-1]] = _EnvText(value, name)
    return layer


class _EnvText(str):
    """A value that came from the environment: always text, coerced by the schema. It keeps
    the name of its variable, so that an error can say where the bad value came from."""

    var: str

    def __new__(cls, value: str, var: str) -> _EnvText:
        text = super().__new__(cls, value)
        text.var = var
        return text


class _LocatedError(ConfigError):
    """A configuration error whose message already says where the value came from."""


def _origin(value: Any, config_file: Path | None) -> str:
    """Where a value came from, for an error message: its environment variable, or the file
    (a table is located by its first value: the only layer that can hold a bad one)."""
    while isinstance(value, Mapping) and value:
        value = next(iter(value.values()))
    if isinstance(value, _EnvText):
        return f"(from {value.var})"
    return f"(in {config_file})" if config_file is not None else ""


def _located(exc: ConfigError, value: Any, config_file: Path | None) -> ConfigError:
    if isinstance(exc, _LocatedError):
        return exc
    origin = _origin(value, config_file)
    return _LocatedError(f"{exc} {origin}") if origin else exc


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str, config_file: Path | None) -> Any:
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: {str(data)!r} is not allowed here; {where} is a table of "
                          f"settings (in the environment: HMD_{where.upper().replace('.', '__')}__<KEY>) "
                          f"{_origin(data, config_file)}".rstrip())
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(
            f"{key} = {_show_unknown(key, data[unknown[0]])}: unknown key; allowed in "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))} "
            f"{_origin(data[unknown[0]], config_file)}".rstrip()
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + name
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key + ".", config_file)
            continue
        try:
            values[name] = _coerce(key, value, hint, fields[name].metadata, config_file)
        except ConfigError as exc:
            raise _located(exc, value, config_file) from None
    return cls(**values)


def _show_unknown(key: str, value: Any) -> str:
    """The value of an unknown key for an error message, unless it may be a secret."""
    if isinstance(value, Mapping):
        return "(a table)"
    text = str(value) if isinstance(value, _EnvText) else value
    if isinstance(text, str) and (any(hint in key.lower() for hint in _SECRET_HINTS)
                                  or "@" in text or "://" in text):
        return REDACTED
    shown = repr(text)
    return shown if len(shown) <= _SHOWN_CHARS_MAX else shown[:_SHOWN_CHARS_MAX] + "…"


def _coerce(key: str, value: Any, hint: Any, meta: Mapping[str, Any], config_file: Path | None) -> Any:
    from_env = isinstance(value, _EnvText)
    shown = REDACTED if meta.get(_SECRET) else repr(str(value) if from_env else value)
    origin = typing.get_origin(hint)
    if meta.get(_SIZE):
        result: Any = _as_size(key, value)
    elif meta.get(_DURATION):
        result = _as_duration(key, value)
    elif hint is bool:
        result = _as_bool(key, value, shown)
    elif hint is int:
        result = _as_int(key, value, shown, meta)
    elif hint is str:
        result = _as_str(key, value, shown)
    elif hint is Path:
        text = _as_str(key, value, shown)
        if not text.strip():
            raise ConfigError(f"{key}: {shown} is not a path; give a directory, e.g. /var/lib/heimdall")
        result = Path(os.path.expanduser(text))
    elif origin is Literal:
        allowed = typing.get_args(hint)
        result = str(value)
        if result not in allowed:
            raise ConfigError(f"{key}: {shown} is not allowed; use one of: {', '.join(allowed)}")
    elif origin is tuple:
        items = value.split(",") if from_env else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{key}: {shown} is not a list of strings")
        result = tuple(_as_str(key, item.strip() if from_env else item, shown) for item in items
                       if not from_env or item.strip())
    elif origin is dict:
        result = _as_map(key, value, typing.get_args(hint)[1], shown, config_file)
    else:  # pragma: no cover - a schema bug, not a user error
        raise AssertionError(f"config schema type {hint!r} for {key} not supported")
    _check_range(key, result, meta, shown)
    return result


def _as_map(key: str, value: Any, value_hint: Any, shown: str, config_file: Path | None) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: {shown} is not a table")
    nested = typing.get_origin(value_hint) is dict
    out: dict[str, Any] = {}
    # A table may mix the file's entries and the environment's: each bad one says its own origin.
    for sub, item in value.items():
        try:
            if nested:
                out[sub] = _as_map(f"{key}.{sub}", item, typing.get_args(value_hint)[1], repr(item),
                                   config_file)
            else:
                out[sub] = _as_str(f"{key}.{sub}", item, repr(str(item)))
        except ConfigError as exc:
            raise _located(exc, item, config_file) from None
    return out


def _as_bool(key: str, value: Any, shown: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _EnvText):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    raise ConfigError(f"{key}: {shown} is not a boolean; use true or false")


def _as_int(key: str, value: Any, shown: str, meta: Mapping[str, Any]) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, _EnvText):
        try:
            return int(value.strip())
        except ValueError:
            pass
    low, high = meta.get(_MIN), meta.get(_MAX)
    allowed = (f"an integer {int(low)}..{int(high)}" if low is not None and high is not None
               else "an integer")
    raise ConfigError(f"{key}: {shown} is not an integer; use {allowed}")


def _as_str(key: str, value: Any, shown: str) -> str:
    if isinstance(value, str):
        return str(value)
    raise ConfigError(f"{key}: {shown} is not a string")


def _as_size(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_size_bytes(value, key=key)
    raise ConfigError(f"{key}: {value!r} is not a size; use bytes or a string like '64MiB'")


def _as_duration(key: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return parse_duration_s(value, key=key)
    raise ConfigError(f"{key}: {value!r} is not a duration; use a string like '30s' or '250ms'")


def _check_range(key: str, value: Any, meta: Mapping[str, Any], shown: str) -> None:
    low, high = meta.get(_MIN), meta.get(_MAX)
    if low is not None and value < low:
        raise ConfigError(f"{key}: {shown} is too small; the minimum is {low}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: {shown} is too large; the maximum is {high}")


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by a marker."""
    return _to_plain(settings)


def _to_plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(_SECRET):
            out[f.name] = REDACTED if value else ""
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = _to_plain(value)
        elif isinstance(value, Path):
            out[f.name] = str(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def to_toml(plain: Mapping[str, Any]) -> str:
    """Render plain config data as TOML (for ``heimdall config show``)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in plain.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        sub_tables: list[tuple[str, Mapping[str, Any]]] = []
        for key, value in table.items():
            if isinstance(value, Mapping):
                sub_tables.append((f"{name}.{key}", value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for sub_name, sub in sub_tables:
            lines.append(f"[{sub_name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in sub.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


__all__ = [
    "ApiSettings", "GraphSettings", "IngestSettings", "LogSettings", "NormalizeSettings",
    "PiiSettings", "Settings", "load", "redacted", "to_toml",
]
