"""What an operator meets running the CLI on a site: logging, usage errors, the data dir's owner."""

from __future__ import annotations

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
