"""The one entrance: ``canonicalize(kind, raw, opts)``.

Before a kind's canonicalizer runs, the dispatcher rejects values longer than
``opts.value_chars_max`` characters (code ``too_long``) and refangs the kinds
that analysts defang (email, ip, cidr, domain, url; see
:mod:`heimdall_core.normalize.refang`). The per-kind functions do neither, so
call them directly only with values that are known to be short and plain.
"""

from __future__ import annotations

from collections.abc import Callable

from heimdall_core.normalize.domain import canonicalize_domain
from heimdall_core.normalize.email import canonicalize_email
from heimdall_core.normalize.hashes import canonicalize_hash, canonicalize_password_hash
from heimdall_core.normalize.ip import canonicalize_cidr, canonicalize_ip
from heimdall_core.normalize.model import (
    DEFAULT,
    KIND_CIDR,
    KIND_DOMAIN,
    KIND_EMAIL,
    KIND_HASH,
    KIND_IP,
    KIND_NAME,
    KIND_OTHER,
    KIND_PASSWORD,
    KIND_PASSWORD_HASH,
    KIND_PHONE,
    KIND_URL,
    KIND_USERNAME,
    KINDS,
    NormalizeOptions,
    Result,
    UnknownKind,
    rejected,
)
from heimdall_core.normalize.refang import SCHEME_HEADS, refang
from heimdall_core.normalize.text import (
    canonicalize_name,
    canonicalize_other,
    canonicalize_password,
    canonicalize_phone,
    canonicalize_username,
)
from heimdall_core.normalize.url import canonicalize_url

Canonicalizer = Callable[[str, NormalizeOptions], Result]

_CANONICALIZERS: dict[str, Canonicalizer] = {
    KIND_EMAIL: canonicalize_email,
    KIND_USERNAME: lambda raw, _opts: canonicalize_username(raw),
    KIND_IP: lambda raw, _opts: canonicalize_ip(raw),
    KIND_CIDR: lambda raw, _opts: canonicalize_cidr(raw),
    KIND_DOMAIN: lambda raw, _opts: canonicalize_domain(raw),
    KIND_URL: lambda raw, _opts: canonicalize_url(raw),
    KIND_HASH: lambda raw, _opts: canonicalize_hash(raw),
    KIND_PASSWORD: lambda raw, _opts: canonicalize_password(raw),
    KIND_PASSWORD_HASH: lambda raw, _opts: canonicalize_password_hash(raw),
    KIND_PHONE: lambda raw, _opts: canonicalize_phone(raw),
    KIND_NAME: lambda raw, _opts: canonicalize_name(raw),
    KIND_OTHER: lambda raw, _opts: canonicalize_other(raw),
}
assert frozenset(_CANONICALIZERS) == KINDS

# Kinds whose values analysts defang; brackets in other kinds are data.
REFANG_KINDS = frozenset({KIND_EMAIL, KIND_IP, KIND_CIDR, KIND_DOMAIN, KIND_URL})


def canonicalizer_for(kind: str, opts: NormalizeOptions = DEFAULT) -> Callable[[str], Result]:
    """``canonicalize`` with ``kind`` and ``opts`` bound: the same results (tested), for
    a caller that canonicalizes many values of one kind (an ingest column).

    Raises :class:`UnknownKind` for a kind outside ``KINDS``.
    """
    canonicalizer = _CANONICALIZERS.get(kind)
    if canonicalizer is None:
        raise UnknownKind(f"unknown indicator kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    chars_max = opts.value_chars_max
    too_long = rejected(kind, "too_long", f"value over {chars_max} characters")
    if kind not in REFANG_KINDS:

        def plain(raw: str) -> Result:
            return too_long if len(raw) > chars_max else canonicalizer(raw, opts)

        return plain

    def refanged(raw: str) -> Result:
        if len(raw) > chars_max:
            return too_long
        if (
            "[" in raw
            or "(" in raw
            or "{" in raw
            or "\\" in raw
            or raw[:4].lower() in SCHEME_HEADS
            or raw[:1].isspace()
        ):  # maybe_defanged(), inlined: this runs for most fields of a dump
            raw = refang(raw)
        return canonicalizer(raw, opts)

    return refanged


def canonicalize(kind: str, raw: str, opts: NormalizeOptions = DEFAULT) -> Result:
    """Canonicalize ``raw`` as ``kind``; never raises for bad values.

    Raises :class:`UnknownKind` for a kind outside ``KINDS`` (a mapping bug,
    not a bad record).
    """
    canonicalizer = _CANONICALIZERS.get(kind)
    if canonicalizer is None:
        raise UnknownKind(f"unknown indicator kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    if len(raw) > opts.value_chars_max:
        return rejected(kind, "too_long", f"value over {opts.value_chars_max} characters")
    if kind in REFANG_KINDS:
        raw = refang(raw)
    return canonicalizer(raw, opts)
