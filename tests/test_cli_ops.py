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

from heimdall_core.cli.common import READ_ONLY_COMMANDS, configure_logging
from heimdall_core.cli.main import main

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


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its owner, size and modification time."""
    return {str(path.relative_to(root)): (st.st_uid, st.st_size, st.st_mtime_ns)
            for path in [root, *root.rglob("*")] for st in [path.lstat()]}


# Each with the command name the refusal names (never its arguments).
WRITING_COMMANDS = [
    ("ingest", ("ingest", str(SAMPLE), "--source", "again", "--force", "--no-progress")),
    ("init", ("init", "--exist-ok")),
    ("log verify", ("log", "verify")),
    ("dumps", ("dumps",)),
    ("project", ("project",)),
    ("state-hash", ("state-hash",)),
    ("query", ("query", "login.example.com")),
    ("pii shred", ("pii", "shred", "--kind", "email", "alice.0@example.com")),
    ("serve", ("serve",)),
]


@pytest.mark.parametrize(("command", "args"), WRITING_COMMANDS, ids=[name for name, _ in WRITING_COMMANDS])
def test_a_command_that_writes_refuses_a_data_dir_another_user_owns(
        site: dict[str, str], command: str, args: tuple[str, ...], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Root (or anyone) writing the service's data dir leaves files the service cannot read:
    refused before anything is written, with the command line that runs it as the owner."""
    data_dir = Path(site["HMD_DATA_DIR"])
    config_file = tmp_path / "heimdall.toml"
    config_file.write_text("[log]\nfsync = false\n")
    monkeypatch.setenv("HMD_DATA_DIR", site["HMD_DATA_DIR"])
    monkeypatch.setenv("HMD_CONFIG", str(config_file))
    owner = data_dir.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    before = _snapshot(data_dir)
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"uid {owner + 1}" in err and "run it as the owner: sudo -u " in err
    assert f"HMD_DATA_DIR={data_dir} HMD_CONFIG={config_file} " in err
    assert err.endswith(f" heimdall {command} ...\n"), err
    assert "alice" not in err and "login.example" not in err  # arguments can be personal data
    assert _snapshot(data_dir) == before


# Each read-only command with its arguments and its exit status here.
READ_ONLY_CASES = [
    ("config show", ("config", "show"), 0), ("keys show", ("keys", "show"), 0),
    ("log tail", ("log", "tail"), 0), ("log stats", ("log", "stats"), 0),
    ("export", ("export", "{out}"), 0),
    ("db status", ("db", "status"), 1),  # 1: no database was started here
]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the site to another user")
@pytest.mark.parametrize(("command", "args", "status"), READ_ONLY_CASES,
                         ids=[name for name, _, _ in READ_ONLY_CASES])
def test_read_only_commands_run_as_another_user_and_write_nothing(
        site: dict[str, str], command: str, args: tuple[str, ...], status: int, tmp_path: Path) -> None:
    data_dir = Path(site["HMD_DATA_DIR"])
    assert _heimdall("project", env=site).returncode == 0  # a graph, as the service keeps one
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)
    before = _snapshot(data_dir)
    out = tmp_path / "out.bundle"
    result = _heimdall(*(arg.format(out=out) for arg in args), env=site)
    assert result.returncode == status, result.stderr
    assert _snapshot(data_dir) == before


def test_every_read_only_command_is_tested_above() -> None:
    assert {name for name, _, _ in READ_ONLY_CASES} == READ_ONLY_COMMANDS


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the site to another user")
def test_root_ingesting_into_the_service_site_is_refused_and_writes_nothing(site: dict[str, str]) -> None:
    """The reproduction: `chown -R 65534 DIR; heimdall ingest` as root left root-owned
    segments, index, heads and a 0700 pii/ the service could no longer read."""
    data_dir = Path(site["HMD_DATA_DIR"])
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)
    result = _heimdall("ingest", str(SAMPLE), "--source", "x", "--no-progress", env=site)
    assert result.returncode == 2, result.stderr
    assert "run it as the owner: sudo -u " in result.stderr
    assert not [path for path in data_dir.rglob("*") if path.lstat().st_uid == 0]
