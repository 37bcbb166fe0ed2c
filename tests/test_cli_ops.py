"""What an operator meets running the CLI on a site: logging, usage errors, the data dir's owner."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heimdall_core.cli.common import configure_logging

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "heimdall_core" / "samples" / "sample-dump.csv"


def _heimdall(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heimdall_core.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def site(tmp_path: Path) -> dict[str, str]:
    """The environment of a site holding the sample dump."""
    env = dict(os.environ, HMD_DATA_DIR=str(tmp_path / "site"), HMD_LOG__FSYNC="false")
    for args in (("init",), ("ingest", str(SAMPLE), "--source", "sample", "--no-progress")):
        result = _heimdall(*args, env=env)
        assert result.returncode == 0, result.stderr
    return env


@pytest.fixture
def restored_log_levels() -> Iterator[None]:
    names = ("", "heimdall", "aiohttp.access", "aiosqlite")
    before = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restored_log_levels")
@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_level_applies_to_heimdall_loggers_only(level: str) -> None:
    configure_logging(level)
    assert logging.getLogger("heimdall.graph").getEffectiveLevel() == getattr(logging, level.upper())
    # The access log names route templates only: it follows log_level, like Heimdall's own.
    assert logging.getLogger("aiohttp.access").getEffectiveLevel() == getattr(logging, level.upper())
    for name in ("aiosqlite", "asyncio", "asyncpg", "aiohttp.server", "aiohttp.client"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name


def test_debug_logging_does_not_dump_sql_parameters(site: dict[str, str]) -> None:
    """At DEBUG aiosqlite logs every statement with its parameters: blind indexes, subject
    ids and ciphertexts of personal data; it must stay quiet whatever log_level says."""
    result = _heimdall("project", env=dict(site, HMD_LOG_LEVEL="debug"))
    assert result.returncode == 0, result.stderr
    assert "aiosqlite" not in result.stderr and "asyncio" not in result.stderr, result.stderr[:2000]


@pytest.mark.parametrize("args", [
    ("log", "verify", "--feed", "58ff"),  # too short to name a feed
    ("log", "tail", "--feed", "zzzzzzzzzz"),  # not hex
    ("log", "reindex", "--feed", "a" * 65),  # longer than a feed id
    ("export", "out.bundle", "--feed", "58ff"),
])
def test_a_malformed_feed_is_a_usage_error(site: dict[str, str], args: tuple[str, ...]) -> None:
    result = _heimdall(*args, env=site)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--feed" in result.stderr and "hex" in result.stderr


def test_a_well_formed_feed_this_site_lacks_is_an_operational_error(site: dict[str, str]) -> None:
    result = _heimdall("log", "verify", "--feed", "0" * 16, env=site)
    assert result.returncode == 1 and "no such feed" in result.stderr


def _readme_config_keys() -> set[str]:
    """The keys of README's configuration table (`| `key` | default | meaning |` rows)."""
    section = (REPO / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}


def _undocumented(shown: dict[str, object], documented: set[str], prefix: str = "") -> list[str]:
    """Keys of `config show` in no row; a row `key.<...>` documents a whole table."""
    missing: list[str] = []
    for name, value in shown.items():
        key = prefix + name
        if key in documented or any(row.startswith(key + ".<") for row in documented):
            continue
        if isinstance(value, dict) and value:
            missing += _undocumented(value, documented, key + ".")
        else:
            missing.append(key)
    return missing


def test_readme_documents_every_setting_config_show_lists(tmp_path: Path) -> None:
    result = _heimdall("config", "show", "--json", env=dict(os.environ, HMD_DATA_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert _undocumented(json.loads(result.stdout), _readme_config_keys()) == []
