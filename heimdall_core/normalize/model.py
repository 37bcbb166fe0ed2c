"""Shared value types of the canonicalizers.

A canonicalizer maps a raw field value to either a :class:`Canonical` (the one
text that vertex ids and lookups use) or a :class:`Rejected` (why not).
Canonicalizers never raise on bad input: bad records are counted and skipped by
ingest, and a reason code is enough to count them.

``Rejected.reason`` is ``"<code>: <text>"``, where ``code`` is a short,
machine-stable identifier (``leading_zero``, ``label_too_long`` ...) and
``text`` explains it for a person. It never contains the input value, because
values may be personal data and reasons end up in logs and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from heimdall_core.errors import NormalizeError

KIND_EMAIL = "email"
KIND_USERNAME = "username"
KIND_IP = "ip"
KIND_CIDR = "cidr"
KIND_DOMAIN = "domain"
KIND_URL = "url"
KIND_HASH = "hash"
KIND_PASSWORD = "password"  # noqa: S105 (a kind name, not a secret)
KIND_PASSWORD_HASH = "password_hash"  # noqa: S105 (a kind name)
KIND_PHONE = "phone"
KIND_NAME = "name"
KIND_OTHER = "other"

KINDS: frozenset[str] = frozenset(
    {
        KIND_EMAIL,
        KIND_USERNAME,
        KIND_IP,
        KIND_CIDR,
        KIND_DOMAIN,
        KIND_URL,
        KIND_HASH,
        KIND_PASSWORD,
        KIND_PASSWORD_HASH,
        KIND_PHONE,
        KIND_NAME,
        KIND_OTHER,
    }
)

# Longest raw value any canonicalizer looks at. Longer values are junk or an
# attack on the parser, and 2 KiB is the URL length most software honours.
VALUE_CHARS_MAX = 2048


class Canonical(NamedTuple):
    """A canonical indicator: ``kind`` + ``value`` identify it.

    A named tuple rather than a frozen dataclass (immutable, compared and hashed by its
    fields all the same): ingest builds one per field, and a frozen dataclass was built
    three and a half times slower (~0.4 us more, several times per record).
    """

    kind: str
    value: str
    display: str | None = None
    # Derived attributes, sorted by key, so equal values compare and hash equal.
    attrs: tuple[tuple[str, str], ...] = ()

    def attr(self, key: str) -> str | None:
        """The value of derived attribute ``key``, or None."""
        for name, value in self.attrs:
            if name == key:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a raw value has no canonical form (never contains the value)."""

    kind: str
    reason: str

    @property
    def code(self) -> str:
        """The machine-stable part of ``reason`` (before the first colon)."""
        return self.reason.partition(":")[0]


Result = Canonical | Rejected

new_canonical = tuple.__new__
"""``new_canonical(Canonical, (kind, value, display, attrs))`` builds a Canonical in C,
without the named tuple's Python-level constructor (all four fields, in order): the
canonicalizers of the kinds every dump is full of use it, once per field."""


def rejected(kind: str, code: str, text: str) -> Rejected:
    """Build a :class:`Rejected` with a ``"code: text"`` reason."""
    return Rejected(kind, f"{code}: {text}")


@dataclass(frozen=True, slots=True)
class NormalizeOptions:
    """Site policy for canonicalization (typed, validated once at start).

    ``email_keep_local_case``: keep the case of e-mail local parts (RFC 5321
    allows case-sensitive mailboxes; almost no provider uses that).
    ``email_fold_dots_domains``: domains whose providers ignore dots in the
    local part (``gmail.com``): dots are removed.
    ``email_strip_plus_domains``: domains whose providers treat ``local+tag``
    as ``local``: the tag is removed. Both are stored canonicalized
    (``GMail.com.`` becomes ``gmail.com``); a value that is no domain name
    raises :class:`NormalizeError` at start.
    ``value_chars_max``: longer raw values are rejected before parsing.
    """

    email_keep_local_case: bool = False
    email_fold_dots_domains: frozenset[str] = field(default_factory=frozenset)
    email_strip_plus_domains: frozenset[str] = field(default_factory=frozenset)
    value_chars_max: int = VALUE_CHARS_MAX

    def __post_init__(self) -> None:
        if self.value_chars_max < 1:
            raise NormalizeError(f"value_chars_max must be at least 1, got {self.value_chars_max}")
        for name in ("email_fold_dots_domains", "email_strip_plus_domains"):
            # Written by people ("GMail.com", "bücher.de"): store canonical forms,
            # since the e-mail canonicalizer compares canonical domains.
            object.__setattr__(self, name, _canonical_domains(name, getattr(self, name)))


def _canonical_domains(option: str, domains: frozenset[str]) -> frozenset[str]:
    if not domains:
        return domains
    # Imported here: the domain module depends on this one.
    from heimdall_core.normalize.domain import canonicalize_domain

    canonical = set()
    for domain in domains:
        result = canonicalize_domain(domain)
        if not isinstance(result, Canonical):
            raise NormalizeError(
                f"{option}: {domain!r} is not a domain name ({result.reason}); give one like gmail.com"
            )
        canonical.add(result.value)
    return frozenset(canonical)


DEFAULT = NormalizeOptions()


class UnknownKind(NormalizeError):
    """A kind name that no canonicalizer handles (a mapping or config bug)."""
