"""Configuration: defaults < TOML < environment, strict validation, redaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from heimdall_core import config
from heimdall_core.config import REDACTED, Settings, load, redacted, to_toml
from heimdall_core.errors import ConfigError


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "heimdall.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load(None, {})
    assert settings.log.fsync is True
    assert settings.log.segment_bytes_max == 64 << 20
    assert settings.graph.backend == "sqlite"
    assert settings.api.port == 8740


def test_toml_overrides_defaults_and_env_overrides_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
data_dir = "/srv/a"
[log]
fsync = false
segment_bytes_max = "1MiB"
group_commit_delay_s = "2ms"
[api]
port = 9000
""")
    from_file = load(path, {})
    assert from_file.data_dir == Path("/srv/a")
    assert from_file.log.fsync is False
    assert from_file.log.segment_bytes_max == 1 << 20
    assert from_file.log.group_commit_delay_s == pytest.approx(0.002)
    assert from_file.log.frame_bytes_max == 1 << 20  # untouched default
    env = {"HMD_DATA_DIR": "/srv/b", "HMD_LOG__FSYNC": "yes", "HMD_API__PORT": "9100"}
    both = load(path, env)
    assert both.data_dir == Path("/srv/b")
    assert both.log.fsync is True
    assert both.log.segment_bytes_max == 1 << 20  # from the file, env silent
    assert both.api.port == 9100


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'site_name = "north"\n')
    assert load(None, {"HMD_CONFIG": str(path)}).site_name == "north"


def test_nesting_rule_and_lists() -> None:
    env = {
        "HMD_LOG_LEVEL": "debug",  # one level: a single underscore is part of the name
        "HMD_PII__POLICY__EMAIL": "encrypt",
        "HMD_GRAPH__RULES__IP__ASN": "lww",
        "HMD_GRAPH__PROVIDER_PRIORITY": "maxmind, rdap,,dns",
        "HMD_PG_ROOT": "/not/config",  # reserved for tools: ignored
        "HMD_TEST_PG_DSN": "postgresql://x",
        "UNRELATED": "1",
    }
    settings = load(None, env)
    assert settings.log_level == "debug"
    assert settings.pii.policy == {"email": "encrypt"}
    assert settings.graph.rules == {"ip": {"asn": "lww"}}
    assert settings.graph.provider_priority == ("maxmind", "rdap", "dns")


def _error(env: dict[str, str] | None = None, toml: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(toml, env or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("env", "parts"), [
    ({"HMD_LOG__FSYN": "1"}, ["log.fsyn", "'1'", "unknown key", "fsync", "segment_bytes_max"]),
    ({"HMD_COLOUR": "blue"}, ["colour", "'blue'", "unknown key", "data_dir"]),
    ({"HMD_LOG__FSYNC": "maybe"}, ["log.fsync", "'maybe'", "true or false"]),
    ({"HMD_API__PORT": "http"}, ["api.port", "'http'", "integer 1..65535"]),
    ({"HMD_API__PORT": "70000"}, ["api.port", "70000", "maximum is 65535"]),
    ({"HMD_LOG__SEGMENT_BYTES_MAX": "1KiB"}, ["log.segment_bytes_max", "'1KiB'", "minimum is 65536"]),
    ({"HMD_LOG__SEGMENT_BYTES_MAX": "big"}, ["log.segment_bytes_max", "'big'", "MiB"]),
    ({"HMD_LOG__GROUP_COMMIT_DELAY_S": "soon"}, ["log.group_commit_delay_s", "'soon'", "ms, s, m"]),
    ({"HMD_LOG_LEVEL": "loud"}, ["log_level", "'loud'", "debug, info, warning, error"]),
    ({"HMD_GRAPH__BACKEND": "neo4j"}, ["graph.backend", "'neo4j'", "sqlite, age"]),
    ({"HMD_DATA_DIR": ""}, ["data_dir", "''", "path"]),
    ({"HMD_LOG": "1"}, ["log", "'1'", "HMD_LOG__<KEY>"]),
    ({"HMD_LOG____FSYNC": "1"}, ["HMD_LOG____FSYNC", "empty level"]),
])
def test_bad_environment_values_name_key_value_and_allowed(env: dict[str, str], parts: list[str]) -> None:
    message = _error(env)
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.parametrize(("text", "parts"), [
    ("[log]\nfsync = 1\n", ["log.fsync", "1", "true or false"]),
    ("[log]\nbatch_events_max = true\n", ["log.batch_events_max", "True", "integer 1..1000000"]),
    ("[log]\nbatch_events_max = 0\n", ["log.batch_events_max", "0", "minimum is 1"]),
    ('site_name = 5\n', ["site_name", "5", "not a string"]),
    ("[graph]\nprovider_priority = \"a\"\n", ["graph.provider_priority", "'a'", "list"]),
    ("[graph]\nbatch_records = 10\n", ["graph.batch_records", "10", "minimum is 100"]),
    ("[pii]\npolicy = 3\n", ["pii.policy", "3", "table"]),
    ("[lgo]\nfsync = true\n", ["lgo", "unknown key", "log"]),
    ("log = [\n", ["not valid TOML"]),
])
def test_bad_toml_values_name_key_value_and_allowed(tmp_path: Path, text: str, parts: list[str]) -> None:
    message = _error(toml=_toml(tmp_path, text))
    for part in parts:
        assert part in message, (part, message)


def test_an_error_names_the_file_or_the_variable_the_bad_value_came_from(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[api]\nport = "abc"\n')
    from_file = _error(toml=path)
    assert from_file.startswith("api.port: 'abc' is not an integer")
    assert from_file.endswith(f"(in {path})"), from_file
    # The environment outranks the file: its bad value is the one named, with its variable.
    from_env = _error({"HMD_API__PORT": "x"}, toml=path)
    assert from_env.startswith("api.port: 'x' is not an integer")
    assert from_env.endswith("(from HMD_API__PORT)") and str(path) not in from_env, from_env


@pytest.mark.parametrize(("text", "env", "origin"), [
    ("[lgo]\nfsync = true\n", {}, "file"),  # unknown key
    ("log = 1\n", {}, "file"),  # a value where a table belongs
    ("", {"HMD_LOG": "1"}, "HMD_LOG"),
    ("[pii.overrides.src]\ncol = 3\n", {"HMD_PII__OVERRIDES__OTHER": "x"}, "file"),  # a table mixing both
    ("[pii.overrides.src]\ncol = \"drop\"\n", {"HMD_PII__OVERRIDES__OTHER": "x"},
     "HMD_PII__OVERRIDES__OTHER"),
    ('[graph]\npostgres_dsn = "postgresql://h:port/x"\n', {}, "file"),
    ("", {"HMD_GRAPH__POSTGRES_DSN": "postgresql://h:port/x"}, "HMD_GRAPH__POSTGRES_DSN"),
    ('[log]\nsegment_bytes_max = "big"\n', {}, "file"),
    ('[pii.policy]\nemail = "clearr"\n', {}, "file"),  # checked by the PII policy, not the schema
    ("", {"HMD_PII__POLICY__EMAIL": "clearr"}, "HMD_PII__POLICY__EMAIL"),
    ('[pii.policy]\nemail = "drop"\n', {"HMD_PII__POLICY__PASSWORD": "clear"}, "HMD_PII__POLICY__PASSWORD"),
    ('[pii.overrides.src]\ncol = "clearr"\n', {"HMD_PII__OVERRIDES__OTHER__COL": "drop"}, "file"),
])
def test_every_kind_of_error_says_where(tmp_path: Path, text: str, env: dict[str, str], origin: str) -> None:
    path = _toml(tmp_path, text)
    message = _error(env, toml=path)
    expected = f"(in {path})" if origin == "file" else f"(from {origin})"
    assert message.endswith(expected), message


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[pii.policy]\nemail = "clearr"\n', "pii.policy.email", "'clearr' is not an action"),
    ('[pii.policy]\nemial = "clear"\n', "pii.policy.emial", "'emial' is not a field kind"),
    ('[pii.policy]\npassword = "clear"\n', "pii.policy.password",
     "kind 'password' may never be kept in clear"),
    ('[pii.overrides.src]\ncol = "clearr"\n', "pii.overrides.src.col", "'clearr' is not an action"),
])
def test_a_bad_pii_policy_names_its_config_key_and_file(tmp_path: Path, text: str, key: str,
                                                         problem: str) -> None:
    path = _toml(tmp_path, text)
    message = _error(toml=path)
    assert message.startswith(f"{key}: {problem}") and message.endswith(f"(in {path})"), message


def test_missing_config_file(tmp_path: Path) -> None:
    assert "not found" in _error(toml=tmp_path / "nope.toml")


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    secret = "hunter2-" + os.urandom(4).hex()
    wrong_type = _error(toml=_toml(tmp_path, f'[graph]\npostgres_dsn = ["{secret}"]\n'))
    assert secret not in wrong_type and REDACTED in wrong_type
    typo = _error({"HMD_GRAPH__POSTGRES_DNS": f"postgresql://u:{secret}@db/x"})
    assert secret not in typo and "graph.postgres_dns" in typo
    url = _error({"HMD_GRAPH__CONNECT": f"postgresql://u:{secret}@db/x"})
    assert secret not in url


def test_redacted_and_toml_round_trip(tmp_path: Path) -> None:
    settings = load(None, {"HMD_GRAPH__POSTGRES_DSN": "postgresql://u:pw@h/db",
                           "HMD_PII__POLICY__EMAIL": "encrypt", "HMD_DATA_DIR": "/srv/x"})
    plain = redacted(settings)
    assert plain["graph"]["postgres_dsn"] == REDACTED
    assert "pw@" not in json.dumps(plain)
    assert redacted(load(None, {}))["graph"]["postgres_dsn"] == ""
    reread = load(_toml(tmp_path, to_toml(plain).replace(f'"{REDACTED}"', '""')), {})
    assert reread.pii.policy == {"email": "encrypt"}
    assert reread.data_dir == Path("/srv/x")
    assert tomllib.loads(to_toml(redacted(Settings())))["log"]["fsync"] is True


def test_config_show_redacts_the_dsn(tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(4).hex()
    env = dict(os.environ, HMD_DATA_DIR=str(tmp_path),
               HMD_GRAPH__POSTGRES_DSN=f"postgresql://heimdall:{secret}@127.0.0.1:5432/heimdall")
    for extra in ([], ["--json"]):
        result = subprocess.run([sys.executable, "-m", "heimdall_core.cli.main", "config", "show",
                                 *extra], env=env, capture_output=True, text=True, check=True)
        assert secret not in result.stdout + result.stderr
        assert REDACTED in result.stdout
        assert str(tmp_path) in result.stdout


def test_cli_exits_2_with_one_line_on_bad_config(tmp_path: Path) -> None:
    env = dict(os.environ, HMD_DATA_DIR=str(tmp_path), HMD_LOG__FSYNC="perhaps")
    result = subprocess.run([sys.executable, "-m", "heimdall_core.cli.main", "config", "show"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "log.fsync" in result.stderr and "'perhaps'" in result.stderr


def test_module_exports() -> None:
    assert set(config.__all__) >= {"Settings", "load", "redacted", "to_toml"}
