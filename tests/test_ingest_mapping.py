"""Column mapping: names, value sniffing, operator overrides and mapping files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import ConfigError
from heimdall_core.ingest import mapping
from heimdall_core.ingest.mapping import (
    FIELD_KINDS,
    MAPPING_KINDS,
    SAMPLE_VALUES_MAX,
    MappingError,
    infer_mapping,
    infer_mapping_from_values,
    is_date,
    is_known_name,
    kind_from_name,
    load_mapping_file,
    merge_mapping,
    parse_map_args,
    parse_mapping_document,
    per_value_canonicalizer,
    sample_by_column,
    sniff_value,
)
from heimdall_core.normalize import Canonical, NormalizeOptions, Rejected, detect_kind

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
        # Of both kinds, each value is its own: one kind would reject the other's values.
        ("host", ["1.2.3.4", "a.example", "b.example.org"], "domain_or_ip"),
        ("host", ["1.2.3.4", "10.0.0.1", "dc01", "localhost"], "domain_or_ip"),
        ("ip", ["1.2.3.4", "10.0.0.0/8", "2001:db8::/32"], "auto"),
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
    assert all(kind in str(raised.value) for kind in (*FIELD_KINDS, *MAPPING_KINDS))
    assert "auto" in MAPPING_KINDS and "email_or_username" in MAPPING_KINDS


def test_per_value_kinds_can_be_given() -> None:
    assert parse_map_args(["indicator=auto", "login=email_or_username"]) == {
        "indicator": "auto", "login": "email_or_username"}
    assert parse_mapping_document('[columns]\nioc = "auto"\n', "toml") == {"ioc": "auto"}


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


# --- indicator feeds: refanged and IDN values, columns of several kinds --------------------

@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("evil[.]com", "domain"), ("evil7[.]example[.]org", "domain"), ("1.2.3[.]4", "ip"),
        ("45.9.20[.]7", "ip"), ("hxxps[:]//evil[.]example/x", "url"), ("a[@]b[.]example", "email"),
        ("10.0.0[.]0/8", "cidr"), ("münchen.de", "domain"), ("bücher3.example", "domain"),
        ("BÜCHER.example", "domain"), ("ünïcode words", None), ("名前", None), ("müller.k", None),
        ("maria.k", None),
        # A domain ends in a known public suffix (or a documentation name, RFC 2606).
        ("john.smith", None), ("JOHN.SMITH", None), ("srv01.corp.internal", None),
        ("maria.de", "domain"), ("a.b.github.io", "domain"), ("evil.test", "domain"),
    ],
)  # fmt: skip
def test_sniff_value_refangs_and_maps_idn(value: str, kind: str | None) -> None:
    assert sniff_value(value) == kind


IOC_MIX = ["http://evil.example/a", "bad.example.org", "10.0.0.0/8", "2001:db8::1",
           "phish@mail.example.net", "198.51.100.3", "5f4dcc3b5aa765d61d8327deb882cf99"]


@pytest.mark.parametrize("column", ["indicator", "ioc", "value", "col1", "observable"])
def test_a_column_of_indicators_of_several_kinds_is_auto(column: str) -> None:
    assert infer_mapping([column], [[v] for v in IOC_MIX * 3]) == {column: "auto"}
    # Two kinds are enough (the STIX bundle's "value"), and a minority of non-indicators.
    assert infer_mapping([column], [["198.51.100.3"], ["example.com"]]) == {column: "auto"}
    assert infer_mapping([column], [[v] for v in [*IOC_MIX, "n/a", "unknown"]]) == {column: "auto"}


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([f"evil{i}[.]example[.]org" for i in range(9)], "domain"),
        ([f"45.9.20[.]{i}" for i in range(9)], "ip"),
        ([f"bücher{i}.example" for i in range(9)], "domain"),
        # Indicators of several kinds, but not most of the values: nothing to detect.
        (["a.example", "1.2.3.4", "x", "y", "z"], "other"),
        # Digests and crypt hashes: password hashes, none of them a file hash kept in clear.
        ([*BCRYPTS, *BCRYPTS, *MD5S], "password_hash"),
    ],
)
def test_single_kind_lists_keep_their_kind(values: list[str], kind: str) -> None:
    assert infer_mapping(["col1"], [[v] for v in values]) == {"col1": kind}


def test_a_named_column_keeps_its_kind_whatever_its_values() -> None:
    assert infer_mapping(["domain"], [[v] for v in IOC_MIX]) == {"domain": "domain"}


def _kinds_of(kind: str, values: list[str]) -> list[tuple[str, str]]:
    canonicalize = per_value_canonicalizer(kind, NormalizeOptions())
    results = [canonicalize(v) for v in values]
    assert all(isinstance(r, Canonical) for r in results)
    return [(r.kind, r.value) for r in results if isinstance(r, Canonical)]


def test_auto_values_take_the_kind_query_detects() -> None:
    values = [*IOC_MIX, "evil[.]example[.]org", "Phish@Mail.Example.NET", "bücher.example",
              "$2b$12$KIXQJQJ5Z9u6mD7xq0aQeOqVYQ1q2J8GkGZrQ9yZ6E1w5m8pS7bG.", "a campaign name"]
    kinds = _kinds_of("auto", values)
    assert [k for k, _ in kinds] == [detect_kind(v) or "other" for v in values]
    assert [k for k, _ in kinds] == ["url", "domain", "cidr", "ip", "email", "ip", "hash", "domain",
                                     "email", "domain", "password_hash", "other"]
    assert kinds[7] == ("domain", "evil.example.org") and kinds[9][1] == "xn--bcher-kva.example"


def test_email_or_username_values() -> None:
    assert _kinds_of("email_or_username", ["Bob@Example.com", "bob", "bob.example", "x@localhost"]) == [
        ("email", "bob@example.com"), ("username", "bob"), ("username", "bob.example"),
        ("email", "x@localhost")]


def test_a_login_column_of_emails_and_usernames_is_decided_per_value() -> None:
    mixed = [[e] for e in EMAILS] + [[u] for u in USERNAMES]
    assert infer_mapping(["login"], mixed) == {"login": "email_or_username"}
    assert infer_mapping(["login"], [[e] for e in EMAILS]) == {"login": "email"}
    assert infer_mapping(["login"], [[u] for u in USERNAMES]) == {"login": "username"}
    assert infer_mapping(["email"], mixed) == {"email": "email"}  # the name is trusted


LOGINS = ["alice@example.com", "bob@example.org", "carol@example.net", "john.smith", "maria.k"]


@pytest.mark.parametrize("column", ["col1", "value", "who"])
def test_emails_beside_user_names_are_a_login_column_whatever_its_name(column: str) -> None:
    """User names shaped like domains must not make the column ``auto`` (which kept them
    in clear as domains, with no subject to shred)."""
    assert infer_mapping([column], [[v] for v in LOGINS]) == {column: "email_or_username"}
    # Names under a real suffix (maria.de) are still user names beside them.
    assert infer_mapping([column], [[v] for v in [*LOGINS, "maria.de"]]) == {
        column: "email_or_username"}
    # Not a login column: one stray token, repeated placeholders, free text, indicators.
    assert infer_mapping([column], [[v] for v in [*EMAILS, "junk"]]) == {column: "email"}
    assert infer_mapping([column], [[v] for v in [*EMAILS * 20, *["n/a"] * 20]]) == {column: "email"}
    notes = [*EMAILS, "hello", "world", "some words", "more words", "and more", "still more"]
    assert infer_mapping([column], [[v] for v in notes]) == {column: "other"}
    assert infer_mapping([column], [[v] for v in [*IOC_MIX, "n/a", "unknown"]]) == {column: "auto"}


@pytest.mark.parametrize("value", ["john.smith", "maria.k", "http://john.smith/a", "x@localhost",
                                   "JOHN.SMITH", "evil.corp.internal"])
def test_an_auto_value_naming_no_known_suffix_is_other(value: str) -> None:
    assert detect_kind(value) is not None  # heimdall query would take it for an indicator
    assert _kinds_of("auto", [value]) == [("other", value)]


def test_an_auto_value_naming_a_known_suffix_or_an_address_keeps_its_kind() -> None:
    assert _kinds_of("auto", ["maria.de", "http://198.51.100.3/a", "http://[2001:db8::1]/", "a@b.co"]) == [
        ("domain", "maria.de"), ("url", "http://198.51.100.3/a"), ("url", "http://[2001:db8::1]/"),
        ("email", "a@b.co")]


def _sample(common: str, odd: str, odd_count: int) -> list[list[str]]:
    """A full sample: ``odd_count`` odd values spread among the common ones."""
    step = SAMPLE_VALUES_MAX // max(odd_count, 1)
    return [[odd.format(i % 250) if odd_count and i % step == 0 and i // step < odd_count
             else common.format(i % 250)]
            for i in range(SAMPLE_VALUES_MAX)]


@pytest.mark.parametrize(
    ("column", "common", "odd", "kind"),
    [
        ("username", "user{}", "user{}@example.com", "email_or_username"),
        ("login", "user{}@example.com", "user{}", "email_or_username"),
        ("ip", "10.0.{}.1", "10.{}.0.0/16", "auto"),
        ("host", "host{}.example.org", "192.0.2.{}", "domain_or_ip"),
        ("col1", "198.51.100.{}", "bad{}.example.org", "auto"),
    ],
)
def test_a_few_odd_values_do_not_make_a_column_per_value(
        column: str, common: str, odd: str, kind: str) -> None:
    """A per-value column is decided value by value and never takes the column pass:
    below ``MINORITY_FRACTION_MIN`` of the sample the odd values are rejected instead."""
    few = round(mapping.MINORITY_FRACTION_MIN * SAMPLE_VALUES_MAX) - 1
    single = infer_mapping([column], _sample(common, odd, 0))[column]
    assert infer_mapping([column], _sample(common, odd, 1)) == {column: single}
    assert infer_mapping([column], _sample(common, odd, few)) == {column: single}
    assert infer_mapping([column], _sample(common, odd, few + 1)) == {column: kind}


def test_email_or_username_is_told_by_the_at_sign_without_detection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_detection(raw: str) -> None:
        raise AssertionError(f"detect_kind called on {raw!r}")

    monkeypatch.setattr(mapping, "detect_kind", no_detection)
    canonicalize = per_value_canonicalizer("email_or_username", NormalizeOptions())
    assert _kinds_of("email_or_username", ["Bob@Example.com", "bob", "john.smith"]) == [
        ("email", "bob@example.com"), ("username", "bob"), ("username", "john.smith")]
    rejected = canonicalize("bob@")
    assert isinstance(rejected, Rejected) and rejected.kind == "email"


def test_domain_or_ip_values() -> None:
    """A host column of names and addresses: single-label host names stay domains."""
    assert _kinds_of("domain_or_ip", ["192.0.2.7", "2001:DB8::1", "10.0.0.0/8", "server01", "DC01",
                                      "localhost", "Mail.Example.ORG", "cafe.bad", "john.smith"]) == [
        ("ip", "192.0.2.7"), ("ip", "2001:db8::1"), ("cidr", "10.0.0.0/8"), ("domain", "server01"),
        ("domain", "dc01"), ("domain", "localhost"), ("domain", "mail.example.org"),
        ("domain", "cafe.bad"), ("domain", "john.smith")]
    canonicalize = per_value_canonicalizer("domain_or_ip", NormalizeOptions())
    for value, kind in (("010.0.0.1", "ip"), ("fe80::1%eth0", "ip"), ("10.1.2.3/8", "cidr"),
                        ("bad_name!", "domain")):
        result = canonicalize(value)
        assert isinstance(result, Rejected) and result.kind == kind, value
    assert parse_map_args(["host=domain_or_ip"]) == {"host": "domain_or_ip"}


# --- dates and times are no phone numbers; plain names no identity kinds -----------------

DATES = ["2024-01-01", "2024.01.01", "01.02.2024", "10.01.2024", "31.12.2024", "2024/01/31",
         "01/31/2024", "31-01-24", "2024-01-01 12:00", "2024-01-01 12:00:00",
         "2024-01-01T12:00:00Z", "2024-01-01T12:00:00.123+01:00", "01.02.2024 10:30",
         "1/2/2024 10:30:00 PM", "2024-1-5"]


@pytest.mark.parametrize("value", DATES)
def test_dates_and_times_are_never_phones(value: str) -> None:
    assert is_date(value)
    assert sniff_value(value) is None


@pytest.mark.parametrize("value", ["+1 555 010 9999", "(555) 010-9999", "555-010-9999",
                                   "030 1234 5678", "12-34-5678", "+49 30 12345678"])
def test_phone_numbers_are_still_phones(value: str) -> None:
    assert not is_date(value)
    assert sniff_value(value) == "phone"


@pytest.mark.parametrize("column", ["created", "first_seen", "last_seen", "last_login", "lastLogin",
                                    "signup_date", "as_name", "user.last_login", "date"])
def test_plain_names_are_no_identity_kind(column: str) -> None:
    assert kind_from_name(column) is None
    assert infer_mapping([column], [[v] for v in DATES]) == {column: "other"}


def test_a_date_column_beside_a_name_stays_other() -> None:
    sample = [[f"Person {i}", f"2024-01-0{i % 3 + 1}", f"192.0.2.{i}"] for i in range(9)]
    assert infer_mapping(["full_name", "created", "ip"], sample) == {
        "full_name": "name", "created": "other", "ip": "ip"}
