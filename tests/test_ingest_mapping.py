"""Column mapping: names, value sniffing, operator overrides and mapping files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import ConfigError
from heimdall_core.ingest.mapping import (
    FIELD_KINDS,
    MappingError,
    infer_mapping,
    infer_mapping_from_values,
    is_known_name,
    kind_from_name,
    load_mapping_file,
    merge_mapping,
    parse_map_args,
    parse_mapping_document,
    sample_by_column,
    sniff_value,
)

EMAILS = ["alice@example.com", "bob.smith+x@mail.example.org", "c@d.co"]
USERNAMES = ["alice", "bob_smith", "c0olguy"]
PLAIN_PASSWORDS = ["hunter2", "P@ssw0rd!", "correct horse"]
MD5S = ["5f4dcc3b5aa765d61d8327deb882cf99", "e10adc3949ba59abbe56e057f20f883e"]
BCRYPTS = ["$2b$12$KIXQJQJ5Z9u6mD7xq0aQeOqVYQ1q2J8GkGZrQ9yZ6E1w5m8pS7bG.", "$2y$10$abcdefghijk"]


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("email", "email"), ("E-Mail", "email"), ("mail", "email"), ("user_email", "email"),
        ("EmailAddress", "email"), ("ip", "ip"), ("ip_address", "ip"), ("src_ip", "ip"),
        ("clientIp", "ip"), ("cidr", "cidr"), ("subnet", "cidr"), ("domain", "domain"),
        ("host", "domain"), ("hostname", "domain"), ("url", "url"), ("uri", "url"),
        ("md5", "hash"), ("sha1", "hash"), ("sha256", "hash"), ("file.hash", "hash"),
        ("password", "password"), ("pass", "password"), ("pwd", "password"),
        ("passwd", "password"), ("password_hash", "password_hash"),
        ("PasswordHash", "password_hash"), ("phone", "phone"), ("tel", "phone"),
        ("mobile", "phone"), ("phone_number", "phone"), ("name", "name"),
        ("first_name", "name"), ("Full Name", "name"), ("user", "username"),
        ("username", "username"), ("login", "username"), ("user.profile.email", "email"),
    ],
)  # fmt: skip
def test_names_alone(column: str, kind: str) -> None:
    assert kind_from_name(column) == kind
    assert infer_mapping([column], []) == {column: kind}


def test_names_that_say_nothing() -> None:
    for column in ("col1", "x", "value", "notes", "created_at", ""):
        assert kind_from_name(column) is None
    assert infer_mapping(["col1", "notes"], [["a", "b"]]) == {"col1": "other", "notes": "other"}


@pytest.mark.parametrize("name", ["email", "E-Mail", "createdAt", "created_at", "notes", "geo.ip",
                                  "source.ip", "event.created", "user.email", "Country", "user_agent"])
def test_vocabulary_names_are_written_as_they_are(name: str) -> None:
    assert is_known_name(name)


@pytest.mark.parametrize("name", ["jsmith", "jsmith.password", "Winter2024", "maria.k", "alice@example.com",
                                  "geo.jsmith", "P@ssw0rd!", "192.0.2.1", "colour"])
def test_other_names_may_be_data_and_are_not(name: str) -> None:
    """A headerless file's first row or an account-keyed JSON dump: written as col<N>."""
    assert not is_known_name(name)


@pytest.mark.parametrize(
    ("column", "values", "kind"),
    [
        ("login", EMAILS, "email"),
        ("login", USERNAMES, "username"),
        ("user", EMAILS, "email"),
        ("secret", PLAIN_PASSWORDS, "password"),
        ("secret", MD5S, "password_hash"),
        ("password", MD5S, "password_hash"),
        ("password", BCRYPTS, "password_hash"),
        ("hash", BCRYPTS, "password_hash"),
        ("hash", MD5S, "hash"),
        ("host", ["1.2.3.4", "10.0.0.1"], "ip"),
        ("host", ["a.example", "b.example.org"], "domain"),
        ("ip", ["10.0.0.0/8", "2001:db8::/32"], "cidr"),
        ("ip", ["1.2.3.4", "::1"], "ip"),
        ("email", ["not an email at all"], "email"),  # an explicit name is trusted
    ],
)
def test_names_refined_by_values(column: str, values: list[str], kind: str) -> None:
    assert infer_mapping([column], [[v] for v in values]) == {column: kind}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("alice@example.com", "email"),
        ("1.2.3.4", "ip"),
        ("2001:db8::1", "ip"),
        ("192.168.0.0/16", "cidr"),
        ("2001:db8::/48", "cidr"),
        ("https://evil.example/path?q=1", "url"),
        ("hxxp://defanged.example/", "url"),
        ("d41d8cd98f00b204e9800998ecf8427e", "hash"),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "hash"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "hash"),
        ("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "password_hash"),
        ("$6$rounds=5000$salt$hash", "password_hash"),
        ("$2b$12$KIXQJQJ5Z9u6mD7xq0aQeO", "password_hash"),
        ("{SSHA}abcdefgh", "password_hash"),
        ("evil.example.co.uk", "domain"),
        ("xn--bcher-kva.example", "domain"),
        ("+1 555 010 9999", "phone"),
        ("+441234567890", "phone"),
        ("(555) 010-9999", "phone"),
        ("12345678", None),
        ("hello world", None),
        ("1.2.3", None),
        ("999.1.1.1", None),
        ("", None),
        ("   ", None),
    ],
)
def test_sniff_value(value: str, kind: str | None) -> None:
    assert sniff_value(value) == kind


def test_headerless_columns_by_majority_vote() -> None:
    sample = [
        ["a@b.example", "1.2.3.4", "x", "5f4dcc3b5aa765d61d8327deb882cf99"],
        ["c@d.example", "5.6.7.8", "y", "e10adc3949ba59abbe56e057f20f883e"],
        ["junk", "", "z", "e10adc3949ba59abbe56e057f20f883e"],
    ]
    assert infer_mapping(["col1", "col2", "col3", "col4"], sample) == {
        "col1": "email",
        "col2": "ip",
        "col3": "other",
        "col4": "hash",
    }


def test_no_majority_means_other() -> None:
    # Half of the values are no indicator: neither one kind nor a column of indicators.
    sample = [["a@b.example"], ["words"], ["hello"], ["x.example"]]
    assert infer_mapping(["col1"], sample) == {"col1": "other"}


def test_combo_columns() -> None:
    sample = [[e, p] for e, p in zip(EMAILS, PLAIN_PASSWORDS, strict=True)]
    assert infer_mapping(["login", "secret"], sample) == {"login": "email", "secret": "password"}


def test_json_records_pooled_by_column() -> None:
    records = [
        (("email", "tags", "tags"), ("a@b.example", "1.2.3.4", "5.6.7.8")),
        (("email", "geo.ip"), ("c@d.example", "9.9.9.9")),
        (("other",), ("x",)),
    ]
    pooled = sample_by_column(records)
    assert pooled == {
        "email": ["a@b.example", "c@d.example"],
        "tags": ["1.2.3.4", "5.6.7.8"],
        "geo.ip": ["9.9.9.9"],
        "other": ["x"],
    }
    assert infer_mapping_from_values(pooled) == {
        "email": "email",
        "tags": "ip",
        "geo.ip": "ip",
        "other": "other",
    }


def test_repeated_columns_pool_their_values() -> None:
    mapping = infer_mapping(["ioc", "ioc"], [["1.2.3.4", "192.0.2.9"], ["5.6.7.8", "1.1.1.1"]])
    assert mapping == {"ioc": "ip"}
    # Pooled, the values of both are of two kinds: each value gets its own.
    mapping = infer_mapping(["ioc", "ioc"], [["1.2.3.4", "evil.example"], ["5.6.7.8", "1.1.1.1"]])
    assert mapping == {"ioc": "auto"}


# --- overrides ---------------------------------------------------------------------------


def test_parse_map_args() -> None:
    assert parse_map_args(["E-Mail=email", " pw = password_hash ", "a=b=url"]) == {
        "E-Mail": "email",
        "pw": "password_hash",
        "a=b": "url",
    }
    assert parse_map_args([]) == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pw=pasword"], r"column 'pw': unknown field kind 'pasword'; allowed kinds: email, "),
        (["email"], "is not COLUMN=KIND"),
        (["=email"], "is not COLUMN=KIND"),
        (["a=email", "a=ip"], "column 'a' is mapped twice"),
    ],
)
def test_parse_map_args_errors(args: list[str], message: str) -> None:
    with pytest.raises(MappingError, match=message) as raised:
        parse_map_args(args)
    assert isinstance(raised.value, ConfigError)


def test_unknown_kind_error_lists_every_kind() -> None:
    with pytest.raises(MappingError) as raised:
        parse_map_args(["c=bogus"])
    assert all(kind in str(raised.value) for kind in FIELD_KINDS)


def test_merge_mapping() -> None:
    inferred = {"a": "email", "b": "other"}
    assert merge_mapping(inferred, {"b": "ip", "c": "url"}) == {"a": "email", "b": "ip", "c": "url"}
    assert inferred == {"a": "email", "b": "other"}
    with pytest.raises(MappingError, match="column 'b'"):
        merge_mapping(inferred, {"b": "nope"})


def test_mapping_files(tmp_path: Path) -> None:
    toml = tmp_path / "map.toml"
    toml.write_text('[columns]\n"E-Mail" = "email"\npw = "password_hash"\n')
    assert load_mapping_file(toml) == {"E-Mail": "email", "pw": "password_hash"}
    js = tmp_path / "map.json"
    js.write_text('{"columns": {"E-Mail": "email", "src": "ip"}}')
    assert load_mapping_file(js) == {"E-Mail": "email", "src": "ip"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("map.yaml", "columns: {}", "must end in .toml or .json"),
        ("map.toml", "[columns\n", "not valid TOML"),
        ("map.json", "{", "not valid JSON"),
        ("map.json", '{"email": "email"}', 'exactly one table, "columns"'),
        ("map.json", '{"columns": ["email"]}', 'exactly one table, "columns"'),
        ("map.toml", "[columns]\nemail = 3\n", "column 'email': kind must be a string"),
        ("map.toml", '[columns]\npw = "hashed"\n', "column 'pw': unknown field kind 'hashed'"),
    ],
)
def test_mapping_file_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MappingError, match=message):
        load_mapping_file(path)


def test_mapping_file_missing_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read"):
        load_mapping_file(tmp_path / "absent.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[columns]\n"\xe9" = "email"\n')
    with pytest.raises(MappingError, match="not UTF-8"):
        load_mapping_file(latin)


def test_mapping_document_without_a_file() -> None:
    assert parse_mapping_document('{"columns": {}}', "json") == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20), st.text(max_size=20))
def test_inference_is_total(values: list[str], column: str) -> None:
    mapping = infer_mapping([column], [[v] for v in values])
    assert mapping[column] in FIELD_KINDS
    assert all(sniff_value(v) in (*FIELD_KINDS, None) for v in values)
