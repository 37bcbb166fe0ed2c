"""Parsing of human-written durations ("30s", "250ms") and sizes ("64MiB").

Pure functions; used by the configuration loader and the CLI.
"""

from __future__ import annotations

import re

from heimdall_core.errors import ConfigError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB|kB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


def parse_duration_s(text: str, *, key: str = "duration") -> float:
    """Parse "250ms", "30s", "5m", "1h", "2d" into seconds."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ConfigError(
            f"{key}: {text!r} is not a duration; use a number and a unit: ms, s, m, h, d (e.g. '30s')"
        )
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]


def parse_size_bytes(text: str, *, key: str = "size") -> int:
    """Parse "4096", "64MiB", "1GB" into bytes."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigError(
            f"{key}: {text!r} is not a size; use bytes or a unit: B, KiB, MiB, GiB, TiB, kB, MB, GB "
            "(e.g. '64MiB')"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def format_size(n_bytes: int) -> str:
    """Render a byte count for humans: 1536 -> '1.5 KiB'."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
