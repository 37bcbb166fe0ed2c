"""The PII policy: defaults, overrides, validation messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heimdall_core.errors import ConfigError, PiiError
from heimdall_core.pii.policy import DEFAULT_ACTIONS, Action, PiiPolicy

EXPECTED_DEFAULTS = {
    "ip": Action.CLEAR,
    "cidr": Action.CLEAR,
    "domain": Action.CLEAR,
    "url": Action.CLEAR,
    "hash": Action.CLEAR,
    "email": Action.ENCRYPT_BLIND_INDEX,
    "username": Action.ENCRYPT_BLIND_INDEX,
    "phone": Action.ENCRYPT_BLIND_INDEX,
    "name": Action.ENCRYPT_BLIND_INDEX,
    "password": Action.DROP,
    "password_hash": Action.BLIND_INDEX,
    "other": Action.ENCRYPT,
}


def test_default_table() -> None:
    assert dict(DEFAULT_ACTIONS) == EXPECTED_DEFAULTS
    policy = PiiPolicy.default()
    for kind, action in EXPECTED_DEFAULTS.items():
        assert policy.action("any-source", "col", kind) is action


def test_unknown_kind_is_treated_as_other() -> None:
    policy = PiiPolicy.default()
    assert policy.action("s", "c", "asn") is Action.ENCRYPT
    policy = PiiPolicy.from_config({"other": "drop"})
    assert policy.action("s", "c", "asn") is Action.DROP


def test_mapping_merges_over_defaults_and_normalizes_case() -> None:
    policy = PiiPolicy.from_config({"ip": "Encrypt+Blind_Index", "password": "encrypt+blind_index"})
    assert policy.action("s", "c", "ip") is Action.ENCRYPT_BLIND_INDEX
    assert policy.action("s", "c", "password") is Action.ENCRYPT_BLIND_INDEX
    assert policy.action("s", "c", "email") is Action.ENCRYPT_BLIND_INDEX  # default kept


def test_column_override_wins_for_its_source_only() -> None:
    policy = PiiPolicy.from_config({}, {"hr-dump": {"notes": "drop", "mail": "blind_index"}})
    assert policy.action("hr-dump", "notes", "other") is Action.DROP
    assert policy.action("hr-dump", "mail", "email") is Action.BLIND_INDEX
    assert policy.action("other-dump", "notes", "other") is Action.ENCRYPT
    assert policy.action("hr-dump", "login", "username") is Action.ENCRYPT_BLIND_INDEX


def test_bad_action_names_key_and_allowed_actions() -> None:
    with pytest.raises(ConfigError) as e:
        PiiPolicy.from_config({"email": "hide"})
    message = str(e.value)
    assert message.startswith("pii.policy.email: 'hide'"), message
    for action in Action:
        assert action.value in message


def test_bad_override_action_names_source_and_column() -> None:
    with pytest.raises(ConfigError) as e:
        PiiPolicy.from_config({}, {"dump1": {"mail": "encrypted"}})
    assert str(e.value).startswith("pii.overrides.dump1.mail: 'encrypted'"), e.value
    assert "encrypt+blind_index" in str(e.value)


def test_non_string_action_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^pii\.policy\.email: 1 "):
        PiiPolicy.from_config({"email": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize("kind", ["password", "password_hash"])
def test_clear_is_refused_for_secret_kinds(kind: str) -> None:
    with pytest.raises(ConfigError) as e:
        PiiPolicy.from_config({kind: "clear"})
    assert str(e.value).startswith(f"pii.policy.{kind}: "), e.value
    assert "never be kept in clear" in str(e.value)
    assert "encrypt+blind_index" in str(e.value)


def test_clear_override_on_a_password_column_is_refused_when_met() -> None:
    policy = PiiPolicy.from_config({}, {"dump1": {"pw": "clear"}})
    with pytest.raises(PiiError) as e:
        policy.action("dump1", "pw", "password")
    assert str(e.value).startswith("pii.overrides.dump1.pw: ") and "'password'" in str(e.value)
    # The same override on a column of a public kind is fine.
    assert policy.action("dump1", "pw", "other") is Action.CLEAR


@pytest.mark.parametrize("kind", ["", "Email", "1st", "e-mail", "x" * 33])
def test_bad_kind_names_are_refused(kind: str) -> None:
    with pytest.raises(ConfigError, match="kind"):
        PiiPolicy.from_config({kind: "clear"})


def test_override_table_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^pii\.overrides\.dump1: "):
        PiiPolicy.from_config({}, {"dump1": "drop"})  # type: ignore[dict-item]


def test_policy_is_immutable() -> None:
    policy = PiiPolicy.default()
    with pytest.raises(TypeError):
        policy.kinds["email"] = Action.CLEAR  # type: ignore[index]


def test_action_flags() -> None:
    assert {a for a in Action if a.encrypts} == {Action.ENCRYPT, Action.ENCRYPT_BLIND_INDEX}
    assert {a for a in Action if a.indexes} == {Action.BLIND_INDEX, Action.ENCRYPT_BLIND_INDEX}


def test_every_field_kind_has_a_default_action() -> None:
    """The policy's kinds are exactly the mapping vocabulary (what `_check_kind` allows)."""
    from heimdall_core.ingest.mapping import FIELD_KINDS

    assert set(DEFAULT_ACTIONS) == set(FIELD_KINDS)


def test_a_typo_in_a_kind_is_refused_naming_the_key_and_the_kinds() -> None:
    with pytest.raises(ConfigError) as e:
        PiiPolicy.from_config({"emial": "clear"})
    message = str(e.value)
    assert "pii.policy.emial" in message and "'emial' is not a field kind" in message
    assert all(kind in message for kind in DEFAULT_ACTIONS)


def _config_show(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HMD_")}
    environ.update(HMD_DATA_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "-m", "heimdall_core.cli.main", "config", "show", *args],
                          env=environ, capture_output=True, text=True)


def test_config_show_refuses_a_typo_in_a_policy_kind(tmp_path: Path) -> None:
    result = _config_show(tmp_path, HMD_PII__POLICY__EMIAL="clear")
    assert result.returncode == 2 and result.stdout == ""
    assert "pii.policy.emial" in result.stderr and "email" in result.stderr


def test_config_show_prints_the_effective_policy(tmp_path: Path) -> None:
    result = _config_show(tmp_path, "--json", HMD_PII__POLICY__IP="encrypt",
                          HMD_PII__ALLOW_PASSWORDS="true")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["pii"]["policy"]
    expected = {kind: action.value for kind, action in DEFAULT_ACTIONS.items()}
    expected.update(ip="encrypt", password="encrypt+blind_index")
    assert shown == expected
    text = _config_show(tmp_path)
    assert text.returncode == 0 and 'email = "encrypt+blind_index"' in text.stdout
