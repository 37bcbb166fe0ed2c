"""Which column holds what: column -> field kind, inferred or given by the operator.

Inference looks first at the column name (header or JSON key), then, when the name says
nothing or needs a value to decide (``login``: email or username? ``password``: clear
or hashed?), at a sample of values, by majority vote of a few fast regexes run on the
refanged values. A column whose values are of several kinds, each a real share of the
sample (``MINORITY_FRACTION_MIN``), is mapped to a *per-value* kind
(``PER_VALUE_KINDS``): an indicator feed's ``indicator`` column, a combo list's logins
(e-mails and user names), a host column of names and addresses. Each value then gets
its own kind at ingest (:func:`per_value_canonicalizer`). Operators override it with
``--map col=kind`` or a mapping file; unknown kinds are rejected with the column and the
allowed kinds named.
Column names are not values, so errors may name them.

Everything here is pure except :func:`load_mapping_file`, the thin file edge.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from heimdall_core.errors import ConfigError
from heimdall_core.normalize import (
    Canonical,
    NormalizeOptions,
    Result,
    canonicalize,
    canonicalizer_for,
    detect_kind,
    refang,
)
from heimdall_core.normalize.psl import has_known_suffix

FIELD_KINDS: Final = (
    "email",
    "username",
    "ip",
    "cidr",
    "domain",
    "url",
    "hash",
    "password",
    "password_hash",
    "phone",
    "name",
    "other",
)
"""The kinds a field has (in the log, the graph and the PII policy)."""

AUTO: Final = "auto"
"""Mapping kind of a column of indicators of several kinds (a feed's ``indicator``
column): each value's kind is what ``heimdall query`` would detect for it (normalize's
``detect_kind``, after refanging); a value of no detectable kind is of kind ``other``,
and so is a domain, URL or e-mail whose host name has no known public suffix
(``john.smith``: more likely a user name than a domain, never kept in clear)."""
EMAIL_OR_USERNAME: Final = "email_or_username"
"""Mapping kind of a login column holding both: a value with an ``@`` is an ``email``,
any other a ``username``."""
DOMAIN_OR_IP: Final = "domain_or_ip"
"""Mapping kind of a host column holding both names and addresses: an address is an
``ip``, a network a ``cidr``, any other value a ``domain`` (single-label host names such
as ``dc01`` included, as in a column mapped ``domain``)."""
PER_VALUE_KINDS: Final = (AUTO, EMAIL_OR_USERNAME, DOMAIN_OR_IP)
"""Mapping kinds decided value by value (never the kind of a field)."""
MAPPING_KINDS: Final = FIELD_KINDS + PER_VALUE_KINDS
"""What a column may be mapped to (``--map COL=KIND``, a mapping file)."""

UNDETECTED_KIND: Final = "other"
"""The kind of a value of an ``auto`` column whose kind cannot be detected."""

SAMPLE_VALUES_MAX: Final = 1000
"""Values per column looked at when sniffing; more only costs time."""
VALUE_CHARS_MAX: Final = 2048
"""Longer values are not sniffed (none of the kinds is that long)."""
MAJORITY_FRACTION_MIN: Final = 0.5
"""A kind must hold for more than this fraction of a column's non-empty sample values."""
MINORITY_FRACTION_MIN: Final = 0.02
"""A second kind of value makes a column per-value only if it holds at least this
fraction of the non-empty sample values (20 of a full sample of 1,000): a per-value
column costs a decision per value and keeps the dump off the column pass (20-40% slower
measured), which a few odd values are not worth; they are rejected as the column's kind
and counted (``rejected_fields``). A smaller sample is a small dump, where a single odd
value is a real share and is kept."""
LOGIN_VALUES_MIN: Final = 2
"""E-mails and distinct user names a column with no telling name needs, each, to be a
login column: a bare token carries no mark of its kind (an address or a URL does), so one
beside a few e-mails is more likely junk than a user name."""
USERNAME_CHARS_MAX: Final = 64
"""Longest value taken for a user name when telling a login column (an e-mail's local
part may be as long, RFC 5321)."""
MAPPING_FILE_BYTES_MAX: Final = 1024 * 1024


class MappingError(ConfigError):
    """A column mapping given by the operator is invalid (names column and kinds)."""


# --- names -------------------------------------------------------------------------------

# Marker kinds: the name alone does not decide, the values do.
_LOGIN: Final = "login"  # email or username
_PW_OR_HASH: Final = "secret"  # password or password_hash
_HOST: Final = "host"  # domain or ip
_ADDRESS: Final = "address"  # ip or cidr

_EXACT_NAMES: Final[Mapping[str, str]] = {
    "email": "email", "e_mail": "email", "mail": "email", "email_address": "email",
    "emailaddress": "email", "mail_address": "email",
    "user": _LOGIN, "username": _LOGIN, "user_name": _LOGIN, "login": _LOGIN,
    "account": _LOGIN, "uid": "username", "nick": "username", "nickname": "username",
    "handle": "username", "screen_name": "username",
    "ip": _ADDRESS, "ip_address": _ADDRESS, "ipaddress": _ADDRESS, "ipaddr": _ADDRESS,
    "src_ip": "ip", "dst_ip": "ip", "source_ip": "ip", "dest_ip": "ip", "client_ip": "ip",
    "remote_addr": "ip", "ipv4": "ip", "ipv6": "ip", "last_ip": "ip", "reg_ip": "ip",
    "cidr": "cidr", "network": "cidr", "subnet": "cidr", "netblock": "cidr", "prefix": "cidr",
    "ip_range": "cidr",
    "domain": "domain", "domain_name": "domain", "fqdn": "domain", "host": _HOST,
    "hostname": _HOST, "host_name": _HOST, "server": _HOST,
    "url": "url", "uri": "url", "link": "url", "href": "url", "website": "url",
    "md5": "hash", "sha1": "hash", "sha256": "hash", "sha512": "hash", "sha224": "hash",
    "sha384": "hash", "hash": "hash", "file_hash": "hash", "filehash": "hash",
    "imphash": "hash", "ssdeep": "hash", "tlsh": "hash",
    "password": _PW_OR_HASH, "pass": _PW_OR_HASH, "pwd": _PW_OR_HASH, "passwd": _PW_OR_HASH,
    "passwort": _PW_OR_HASH, "secret": _PW_OR_HASH, "plaintext": "password",
    "password_hash": "password_hash", "passwordhash": "password_hash", "pwhash": "password_hash",
    "pw_hash": "password_hash", "hashed_password": "password_hash", "pass_hash": "password_hash",
    "crypt": "password_hash", "bcrypt": "password_hash", "salt": "other",
    "phone": "phone", "tel": "phone", "telephone": "phone", "mobile": "phone", "cell": "phone",
    "msisdn": "phone", "phone_number": "phone", "phonenumber": "phone",
    "mobile_number": "phone", "cellphone": "phone",
    "name": "name", "first_name": "name", "firstname": "name", "last_name": "name",
    "lastname": "name", "full_name": "name", "fullname": "name", "surname": "name",
    "given_name": "name", "family_name": "name", "display_name": "name", "displayname": "name",
    "middle_name": "name", "real_name": "name",
}  # fmt: skip

_PLAIN_NAMES: Final = frozenset({
    "id", "uuid", "guid", "record_id", "row", "index", "key",
    "created", "created_at", "updated", "updated_at", "modified", "deleted_at", "date", "time",
    "datetime", "timestamp", "ts", "first_seen", "last_seen", "seen", "expires", "expiry",
    "last_login", "registered", "signup_date",
    "country", "country_code", "cc", "city", "region", "state", "province", "zip", "postcode",
    "postal_code", "latitude", "longitude", "lat", "lon", "timezone", "locale", "lang", "language",
    "status", "state_code", "type", "kind", "category", "class", "label", "tag", "tags",
    "description", "comment", "comments", "note", "notes", "title", "message", "reason",
    "indicator", "ioc", "observable",
    "source", "feed", "provider", "reference", "ref", "tlp", "confidence", "severity", "score",
    "risk", "threat", "threat_type", "malware", "family", "campaign", "actor", "attack",
    "port", "src_port", "dst_port", "protocol", "proto", "method", "path", "query", "status_code",
    "asn", "as_number", "as_name", "org", "organization", "organisation", "isp", "company",
    "user_agent", "useragent", "referrer", "referer", "bytes", "size", "length", "count", "hits",
    "role", "group", "groups", "plan", "active", "enabled", "verified", "banned",
    # parts of nested JSON names (ECS-style "source.ip", "event.created", "geo.country"):
    "geo", "location", "meta", "metadata", "data", "attributes", "properties", "details", "info",
    "fields", "payload", "event", "record", "entry", "src", "dst", "destination", "client",
    "request", "response", "http", "dns", "file", "process", "network_info", "full",
})  # fmt: skip
"""Column names that say what a column holds and are no kind of indicator: kept as they are
in the log and the graph (``is_known_name``), as the kinds' names are. A word of this fixed
list cannot be a value that leaked from a headerless file's first row; any other name may be."""

# For names not in the table: a token of the name decides (src_ip_addr, user_email...).
# Order matters: the first rule whose tokens all occur wins.
_TOKEN_RULES: Final[tuple[tuple[frozenset[str], str], ...]] = (
    (frozenset({"password", "hash"}), "password_hash"),
    (frozenset({"pass", "hash"}), "password_hash"),
    (frozenset({"pwd", "hash"}), "password_hash"),
    (frozenset({"email"}), "email"),
    (frozenset({"mail"}), "email"),
    (frozenset({"password"}), _PW_OR_HASH),
    (frozenset({"passwd"}), _PW_OR_HASH),
    (frozenset({"cidr"}), "cidr"),
    (frozenset({"ip"}), _ADDRESS),
    (frozenset({"ipv4"}), "ip"),
    (frozenset({"ipv6"}), "ip"),
    (frozenset({"url"}), "url"),
    (frozenset({"uri"}), "url"),
    (frozenset({"domain"}), "domain"),
    (frozenset({"hostname"}), _HOST),
    (frozenset({"host"}), _HOST),
    (frozenset({"md5"}), "hash"),
    (frozenset({"sha1"}), "hash"),
    (frozenset({"sha256"}), "hash"),
    (frozenset({"sha512"}), "hash"),
    (frozenset({"hash"}), "hash"),
    (frozenset({"phone"}), "phone"),
    (frozenset({"mobile"}), "phone"),
    (frozenset({"username"}), _LOGIN),
    (frozenset({"login"}), _LOGIN),
    (frozenset({"name"}), "name"),
)

_NAME_SPLIT: Final = re.compile(r"[^a-z0-9]+")
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _name_forms(column: str) -> tuple[str, list[str]]:
    """``"User.E-Mail"`` -> ("e_mail", ["e", "mail"]); dotted keys use their last part."""
    last = column.rsplit(".", 1)[-1]
    words = _NAME_SPLIT.split(_CAMEL.sub("_", last).lower())
    tokens = [w for w in words if w]
    return "_".join(tokens), tokens


def _name_hint(column: str) -> str | None:
    """A kind, a marker kind (decided by values), or None if the name says nothing."""
    joined, tokens = _name_forms(column)
    if not joined:
        return None
    exact = _EXACT_NAMES.get(joined)
    if exact is not None:
        return exact
    if joined in _PLAIN_NAMES:
        return None  # "last_login", "first_seen": their tokens do not say what they hold
    present = set(tokens)
    for needed, kind in _TOKEN_RULES:
        if needed <= present:
            return kind
    return None


def is_known_name(name: str) -> bool:
    """Whether ``name`` is, word for word, a column name of the vocabulary above or of
    :data:`_PLAIN_NAMES` (any case or separator: ``E-Mail``, ``firstName``,
    ``createdAt``; a dotted JSON name in every part:
    ``user.email``). Such a name is not data; any other may be (a headerless file's
    first row, a JSON dump keyed by account: ``jsmith.password``)."""
    return all(form in _EXACT_NAMES or form in _PLAIN_NAMES
               for form in (_name_forms(part)[0] for part in name.split(".")))


def kind_from_name(column: str) -> str | None:
    """The kind a column name alone suggests (a guess for the ambiguous ones), or None.

    Used to recognise a header row: a row of such names is a header.
    """
    hint = _name_hint(column)
    return _MARKER_DEFAULTS.get(hint, hint) if hint is not None else None


# --- values ------------------------------------------------------------------------------

_EMAIL: Final = re.compile(r"[^@\s\"'<>,;]{1,64}@[^@\s\"'<>,;]+\.[^@\s\"'<>,;.]{2,}")
_IP_CHARS: Final = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_CIDR_CHARS: Final = re.compile(r"[0-9A-Fa-f:.]{2,45}/\d{1,3}")
_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{1,15}://\S+")
_HEX_HASH: Final = re.compile(r"(?:[0-9A-Fa-f]{32}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{56}|[0-9A-Fa-f]{64}"
                              r"|[0-9A-Fa-f]{96}|[0-9A-Fa-f]{128})")  # fmt: skip
_CRYPT: Final = re.compile(
    r"\$(?:2[abxy]?|argon2(?:id|i|d)|1|5|6|7|y|gy|sha1|md5|apr1|pbkdf2[\w-]*|scrypt)\$\S+"
    r"|\{(?:SSHA|SHA|SMD5|MD5|CRYPT|SSHA256|SSHA512|PBKDF2[\w-]*)\}\S+"
    r"|pbkdf2_sha\d+\$\S+|sha1\$\S+"
)
# A candidate user name: one token, no "@" (else an e-mail), not too long.
_USERNAME: Final = re.compile(rf"[^\s@]{{1,{USERNAME_CHARS_MAX}}}")
_DOMAIN: Final = re.compile(
    r"(?=.{4,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})\.?"
)
_PHONE: Final = re.compile(r"\+[1-9][\d\s().-]{6,20}\d|\(?\d{2,5}\)?[\s.-]\d{2,5}[\s.-]\d{2,8}")
_DIGITS_MIN: Final = 7
_DIGITS_MAX: Final = 15
# Dates, with or without a time: ISO 2024-01-31 (also with dots or slashes), European
# 31.01.2024 / 31-01-24 and US 01/31/2024. Their digits and separators fit _PHONE, and a
# date taken for a phone number becomes the subject of every record of that day.
_DATE: Final = re.compile(
    r"(?:(?P<year>\d{4})[-./](?P<month>\d{1,2})[-./](?P<day>\d{1,2})"
    r"|(?P<first>\d{1,2})[-./](?P<second>\d{1,2})[-./](?:\d{4}|\d{2}))"
    r"(?:[T\s]\d{1,2}[:.]\d{2}(?:[:.]\d{2}(?:[.,]\d{1,9})?)?\s*(?:Z|[+-]\d{2}:?\d{2}|[AaPp][Mm])?)?"
)
_MONTHS: Final = 12
_DAYS_MAX: Final = 31


def sniff_value(value: str) -> str | None:
    """The kind one value looks like, or None. Cheap: a few anchored regexes, on the value
    refanged (``evil[.]example`` is a domain); a non-ASCII name (``münchen.de``) is a
    domain if it maps to one under IDNA. A domain ends in a known public suffix
    (``has_known_suffix``: ``john.smith`` is none, as in an ``auto`` column). A date or
    time is never a phone number."""
    v = value.strip()
    if not v or len(v) > VALUE_CHARS_MAX:
        return None
    v = refang(v)
    if "@" in v:
        return "email" if _EMAIL.fullmatch(v) else None
    if _URL.fullmatch(v):
        return "url"
    if _CRYPT.fullmatch(v):
        return "password_hash"
    if _HEX_HASH.fullmatch(v):
        return "hash"
    if _CIDR_CHARS.fullmatch(v):
        return "cidr" if _is_network(v) else None
    if _IP_CHARS.fullmatch(v) and _is_ip(v):
        return "ip"
    if _is_domain(v):
        return "domain"
    if _PHONE.fullmatch(v) and _DIGITS_MIN <= sum(c.isdigit() for c in v) <= _DIGITS_MAX \
            and not is_date(v):
        return "phone"
    return None


def _is_domain(v: str) -> bool:
    """Whether ``v`` is shaped as a domain (``_DOMAIN``; a name in Unicode if its IDNA
    form is, so ``müller.k``, like ``maria.k``, is none) under a known public suffix."""
    if v.isascii():
        return _DOMAIN.fullmatch(v) is not None and has_known_suffix(v.lower().rstrip("."))
    result = canonicalize("domain", v)
    return isinstance(result, Canonical) and _DOMAIN.fullmatch(result.value) is not None \
        and has_known_suffix(result.value)


def is_date(value: str) -> bool:
    """Whether ``value`` is a calendar date, with or without a time of day (see ``_DATE``):
    a month of 1 to 12 and a day of 1 to 31, in either order for the day-first and
    month-first forms."""
    match = _DATE.fullmatch(value.strip())
    if match is None:
        return False
    if match["year"] is not None:
        return _is_day_month(int(match["day"]), int(match["month"]))
    first, second = int(match["first"]), int(match["second"])
    return _is_day_month(first, second) or _is_day_month(second, first)


def _is_day_month(day: int, month: int) -> bool:
    return 1 <= month <= _MONTHS and 1 <= day <= _DAYS_MAX


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def _is_network(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        return False
    return True


class _Sample(NamedTuple):
    """What the first ``SAMPLE_VALUES_MAX`` non-empty values of a column look like."""

    votes: Counter[str | None]
    """How many sniff as each kind (None: no kind)."""
    total: int
    """How many were looked at."""
    words: int
    """How many of no kind are one token shaped like a user name (``_USERNAME``)."""
    distinct_words: int
    """How many different such tokens (a placeholder such as ``n/a`` repeats)."""


def _sample(values: Iterable[str]) -> _Sample:
    votes: Counter[str | None] = Counter()
    words: Counter[str] = Counter()
    total = 0
    for value in values:
        v = value.strip()
        if not v:
            continue
        kind = sniff_value(v)
        votes[kind] += 1
        if kind is None and _USERNAME.fullmatch(v):
            words[v] += 1
        total += 1
        if total >= SAMPLE_VALUES_MAX:
            break
    return _Sample(votes, total, words.total(), len(words))


def _majority(votes: Counter[str | None], total: int) -> str | None:
    """The kind of more than ``MAJORITY_FRACTION_MIN`` of the values, if any."""
    if not total:
        return None
    kind, count = votes.most_common(1)[0]
    return kind if count / total > MAJORITY_FRACTION_MIN else None


def _real_share(count: int, total: int) -> bool:
    """Whether ``count`` of ``total`` sampled values are enough to make a column
    per-value (``MINORITY_FRACTION_MIN``)."""
    return count > 0 and count >= MINORITY_FRACTION_MIN * total


# --- inference ---------------------------------------------------------------------------

_MARKER_DEFAULTS: Final[Mapping[str, str]] = {
    _LOGIN: "username",
    _PW_OR_HASH: "password",
    _HOST: "domain",
    _ADDRESS: "ip",
}
# Which sniffed kinds a marker accepts, besides its default.
_MARKER_CHOICES: Final[Mapping[str, frozenset[str]]] = {
    _LOGIN: frozenset({"email", "username"}),
    _PW_OR_HASH: frozenset({"password_hash", "password"}),
    _HOST: frozenset({"domain", "ip"}),
    _ADDRESS: frozenset({"ip", "cidr"}),
}
_HASHED_KINDS: Final = frozenset({"hash", "password_hash"})
_DETECTED_KINDS: Final = frozenset({"url", "email", "cidr", "ip", "domain", "hash", "password_hash"})
"""The kinds ``detect_kind`` tells apart (those an ``auto`` column's values may take)."""
_NAMED_HOST_KINDS: Final = frozenset({"domain", "url", "email"})
"""Detected kinds whose value names a host: a domain, or holds one (see ``_HOST_ATTR``)."""
_HOST_ATTR: Final[Mapping[str, str]] = {"url": "host", "email": "domain"}
_ADDRESS_KINDS: Final = frozenset({"ip", "cidr"})


def _decide(hint: str | None, values: Sequence[str]) -> str:
    sample = _sample(values)
    votes, total = sample.votes, sample.total
    if hint is None:
        if _is_login_column(sample):
            return EMAIL_OR_USERNAME  # e-mails beside user names, which may look like domains
        return AUTO if _mixed_indicators(votes, total) else _majority(votes, total) or "other"
    if hint == _LOGIN and _real_share(votes["email"], total) \
            and _real_share(total - votes["email"], total):
        return EMAIL_OR_USERNAME  # a combo list of email:pass and user;hash lines
    if hint == _HOST and _is_names_and_addresses(sample):
        return DOMAIN_OR_IP
    if hint == _ADDRESS and _mixed_indicators(votes, total):
        return AUTO  # addresses and networks
    kind = _majority(votes, total)
    if hint == _PW_OR_HASH and kind in _HASHED_KINDS:
        return "password_hash"  # a "password" column full of hashes is hashed passwords
    if hint == "hash" and kind == "password_hash":
        return "password_hash"  # crypt forms ($2b$, $argon2id$) are password hashes
    choices = _MARKER_CHOICES.get(hint)
    if choices is None:
        return hint
    return kind if kind in choices else _MARKER_DEFAULTS[hint]


def _mixed_indicators(votes: Counter[str | None], total: int) -> bool:
    """Whether more than ``MAJORITY_FRACTION_MIN`` of the values are indicators, with more
    than one kind of them a real share (``_real_share``): mapping the column to one kind
    would reject the values of the others. Digests and crypt hashes count as one kind: a
    column of both is a column of password hashes (``_decide``), whose bare digests must
    not be kept in clear as file hashes."""
    by_kind: Counter[str] = Counter()
    for kind, count in votes.items():
        if kind in _DETECTED_KINDS:
            by_kind["hash" if kind in _HASHED_KINDS else kind] += count
    shares = sum(1 for count in by_kind.values() if _real_share(count, total))
    return shares > 1 and by_kind.total() > MAJORITY_FRACTION_MIN * total


def _is_login_column(sample: _Sample) -> bool:
    """Whether a column with no telling name is a login column: e-mails and distinct
    user-name tokens each a real share, together most of the values, and hardly anything
    else. Values that look like domains may be user names too (``maria.de``) and do not
    count against it: mapped ``auto``, they would be written in clear as domains."""
    votes, total = sample.votes, sample.total
    emails = votes["email"]
    others = total - emails - votes["domain"] - sample.words
    return min(emails, sample.distinct_words) >= LOGIN_VALUES_MIN \
        and _real_share(emails, total) and _real_share(sample.distinct_words, total) \
        and not _real_share(others, total) \
        and emails + sample.words > MAJORITY_FRACTION_MIN * total


def _is_names_and_addresses(sample: _Sample) -> bool:
    """Whether a host column holds addresses (or networks) and names (single-label names
    such as ``dc01`` sniff as no kind), each a real share."""
    votes, total = sample.votes, sample.total
    addresses = sum(votes[kind] for kind in _ADDRESS_KINDS)
    return _real_share(addresses, total) and _real_share(votes["domain"] + sample.words, total)


Canonicalizer = Callable[[str], Result]


def per_value_canonicalizer(kind: str, options: NormalizeOptions) -> Canonicalizer:
    """The canonicalizer of a column mapped to a per-value kind (``PER_VALUE_KINDS``; see
    each kind's rule there). The result's kind is the value's own, so the PII policy
    applies per value."""
    return _PER_VALUE_CANONICALIZERS[kind](options)


def _auto_canonicalizer(options: NormalizeOptions) -> Canonicalizer:
    """Each value as the kind ``detect_kind`` finds for it (what ``heimdall query`` does
    with a value); a value of no kind, or naming a host with no known public suffix
    (``_has_known_host``), as ``other``."""
    by_kind = {kind: canonicalizer_for(kind, options) for kind in _DETECTED_KINDS}
    undetected = canonicalizer_for(UNDETECTED_KIND, options)

    def canonicalize_value(raw: str) -> Result:
        # detect_kind canonicalizes to tell the kind but returns only the kind: the value
        # is canonicalized again, with this site's options, by its kind's canonicalizer.
        detected = detect_kind(raw)
        if detected is None:
            return undetected(raw)
        result = by_kind[detected](raw)
        if isinstance(result, Canonical) and not _has_known_host(result):
            return undetected(raw)
        return result

    return canonicalize_value


def _has_known_host(result: Canonical) -> bool:
    """Whether a domain, URL or e-mail names its host under a known public suffix (or by
    address): ``john.smith`` or ``maria.k`` in a column of several kinds is more likely a
    user name than a domain, and a domain is kept in clear, with no subject to shred."""
    if result.kind not in _NAMED_HOST_KINDS:
        return True
    attr = _HOST_ATTR.get(result.kind)
    host = result.value if attr is None else result.attr(attr)
    return host is None or _is_ip(host) or has_known_suffix(host)


def _email_or_username_canonicalizer(options: NormalizeOptions) -> Canonicalizer:
    """A value with an ``@`` as an e-mail (rejected if it is none), any other as a user
    name: one test per value, no detection."""
    email = canonicalizer_for("email", options)
    username = canonicalizer_for("username", options)

    def canonicalize_value(raw: str) -> Result:
        return email(raw) if "@" in raw else username(raw)

    return canonicalize_value


def _domain_or_ip_canonicalizer(options: NormalizeOptions) -> Canonicalizer:
    """A network (a value with a ``/``) as a ``cidr``, an address as an ``ip``, any other
    value as a ``domain``. A value that is neither, with no letter or with a ``:``
    (``010.0.0.1``, ``fe80::1%eth0``), is rejected with the address's reason."""
    ip = canonicalizer_for("ip", options)
    cidr = canonicalizer_for("cidr", options)
    domain = canonicalizer_for("domain", options)

    def canonicalize_value(raw: str) -> Result:
        if "/" in raw:
            return cidr(raw)
        address = ip(raw)
        if isinstance(address, Canonical):
            return address
        name = domain(raw)
        if isinstance(name, Canonical) or (":" not in raw and any(map(str.isalpha, raw))):
            return name
        return address

    return canonicalize_value


_PER_VALUE_CANONICALIZERS: Final[Mapping[str, Callable[[NormalizeOptions], Canonicalizer]]] = {
    AUTO: _auto_canonicalizer,
    EMAIL_OR_USERNAME: _email_or_username_canonicalizer,
    DOMAIN_OR_IP: _domain_or_ip_canonicalizer,
}
assert frozenset(_PER_VALUE_CANONICALIZERS) == frozenset(PER_VALUE_KINDS)


def infer_mapping_from_values(values_by_column: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Column -> kind from each column's name and its sample values."""
    return {col: _decide(_name_hint(col), vals) for col, vals in values_by_column.items()}


def infer_mapping(columns: Sequence[str], sample: Sequence[Sequence[str]]) -> dict[str, str]:
    """Column -> kind for tabular input: ``sample`` rows are aligned with ``columns``.

    Repeated column names pool their values. For JSON records (each with its own columns)
    use :func:`sample_by_column` then :func:`infer_mapping_from_values`.
    """
    pooled: dict[str, list[str]] = {col: [] for col in columns}
    for row in sample:
        for col, value in zip(columns, row, strict=False):
            pooled[col].append(value)
    return infer_mapping_from_values(pooled)


def sample_by_column(
    records: Iterable[tuple[Sequence[str], Sequence[str]]],
) -> dict[str, list[str]]:
    """Pool (columns, values) pairs (e.g. RawRecord fields) into values per column."""
    pooled: dict[str, list[str]] = {}
    for columns, values in records:
        for col, value in zip(columns, values, strict=False):
            bucket = pooled.setdefault(col, [])
            if len(bucket) < SAMPLE_VALUES_MAX:
                bucket.append(value)
    return pooled


# --- operator overrides ------------------------------------------------------------------


def check_kind(column: str, kind: str) -> str:
    """Return ``kind`` if it is a mapping kind, else raise naming the column and the kinds."""
    if kind not in MAPPING_KINDS:
        raise MappingError(
            f"column {column!r}: unknown field kind {kind!r}; "
            f"allowed kinds: {', '.join(MAPPING_KINDS)}"
        )
    return kind


def parse_map_args(args: Sequence[str]) -> dict[str, str]:
    """``["email=email", "pw=password_hash"]`` -> {column: kind}.

    The last ``=`` separates the kind, so column names may contain ``=``.
    """
    mapping: dict[str, str] = {}
    for arg in args:
        column, sep, kind = arg.rpartition("=")
        column, kind = column.strip(), kind.strip()
        if not sep or not column:
            raise MappingError(
                f"mapping {arg!r} is not COLUMN=KIND (kinds: {', '.join(MAPPING_KINDS)})"
            )
        _add(mapping, column, kind)
    return mapping


def _add(mapping: dict[str, str], column: str, kind: str) -> None:
    if column in mapping:
        raise MappingError(f"column {column!r} is mapped twice")
    mapping[column] = check_kind(column, kind)


def parse_mapping_document(text: str, fmt: str) -> dict[str, str]:
    """A mapping file's content: a ``columns`` table of column = kind.

    TOML::

        [columns]
        "E-Mail" = "email"
        pw = "password_hash"

    JSON: ``{"columns": {"E-Mail": "email", "pw": "password_hash"}}``.
    """
    try:
        doc: object = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise MappingError(f"mapping file is not valid {fmt.upper()}: {e}") from e
    if not isinstance(doc, dict) or set(doc) != {"columns"} or not isinstance(
        doc["columns"], dict
    ):
        raise MappingError('mapping file must hold exactly one table, "columns" (column = kind)')
    mapping: dict[str, str] = {}
    for column, kind in doc["columns"].items():
        if not isinstance(kind, str):
            raise MappingError(f"column {column!r}: kind must be a string")
        _add(mapping, str(column), kind)
    return mapping


def load_mapping_file(path: str | Path) -> dict[str, str]:
    """Read a ``.toml`` or ``.json`` mapping file (see :func:`parse_mapping_document`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise MappingError(f"mapping file {path.name!r} must end in .toml or .json")
    try:
        with path.open("rb") as f:
            raw = f.read(MAPPING_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise MappingError(f"cannot read mapping file {path.name!r}: {e.strerror}") from e
    if len(raw) > MAPPING_FILE_BYTES_MAX:
        raise MappingError(f"mapping file {path.name!r} is larger than 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MappingError(f"mapping file {path.name!r} is not UTF-8") from e
    return parse_mapping_document(text, suffix[1:])


def merge_mapping(inferred: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """Inferred mapping with the operator's overrides on top (overrides may add columns:
    JSON keys can appear after the sample)."""
    merged = dict(inferred)
    for column, kind in overrides.items():
        merged[column] = check_kind(column, kind)
    return merged
