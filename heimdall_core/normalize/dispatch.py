"""The one entrance: ``canonicalize(kind, raw, opts)``.

Before a kind's canonicalizer runs, the dispatcher rejects values longer than
``opts.value_chars_max`` characters (code ``too_long``) and refangs the kinds
that analysts defang (email, ip, cidr, domain, url; see
:mod:`heimdall_core.normalize.refang`). The per-kind functions do neither, so
call them directly only with values that are known to be short and plain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from heimdall_core.normalize.domain import canonicalize_domain
from heimdall_core.normalize.email import canonicalize_email, canonicalize_plain_email
from heimdall_core.normalize.hashes import canonicalize_hash
from heimdall_core.normalize.ip import canonicalize_cidr, canonicalize_ip, canonicalize_plain_ip
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
from heimdall_core.normalize.passwords import canonicalize_password_hash
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

# The per-kind functions that take the raw value only (every kind but email).
_ONE_ARGUMENT: dict[str, Callable[[str], Result]] = {
    KIND_USERNAME: canonicalize_username,
    KIND_IP: canonicalize_ip,
    KIND_CIDR: canonicalize_cidr,
    KIND_DOMAIN: canonicalize_domain,
    KIND_URL: canonicalize_url,
    KIND_HASH: canonicalize_hash,
    KIND_PASSWORD: canonicalize_password,
    KIND_PASSWORD_HASH: canonicalize_password_hash,
    KIND_PHONE: canonicalize_phone,
    KIND_NAME: canonicalize_name,
    KIND_OTHER: canonicalize_other,
}


def _ignoring_options(function: Callable[[str], Result]) -> Canonicalizer:
    return lambda raw, _opts: function(raw)


_CANONICALIZERS: dict[str, Canonicalizer] = {
    KIND_EMAIL: canonicalize_email,
    **{kind: _ignoring_options(function) for kind, function in _ONE_ARGUMENT.items()},
}
assert frozenset(_CANONICALIZERS) == KINDS

# Kinds whose values analysts defang; brackets in other kinds are data.
REFANG_KINDS = frozenset({KIND_EMAIL, KIND_IP, KIND_CIDR, KIND_DOMAIN, KIND_URL})


def canonicalizer_for(kind: str, opts: NormalizeOptions = DEFAULT) -> Callable[[str], Result]:
    """``canonicalize`` with ``kind`` and ``opts`` bound: the same results (tested), for
    a caller that canonicalizes many values of one kind (an ingest column).

    One Python call per value on top of the kind's function: this runs for every field
    of a dump, where each extra call layer or prefilter scan is a measurable share.

    Raises :class:`UnknownKind` for a kind outside ``KINDS``.
    """
    if kind not in _CANONICALIZERS:
        raise UnknownKind(f"unknown indicator kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    # A partial is called in C: no Python frame between the caller and the function.
    canonicalizer = _ONE_ARGUMENT.get(kind) or functools.partial(canonicalize_email, opts=opts)
    chars_max = opts.value_chars_max
    too_long = rejected(kind, "too_long", f"value over {chars_max} characters")
    if kind not in REFANG_KINDS:

        def plain(raw: str) -> Result:
            return too_long if len(raw) > chars_max else canonicalizer(raw)

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
        ):  # maybe_defanged(), inlined: a few C-level scans, cheaper than a call or a regex
            raw = refang(raw)
        return canonicalizer(raw)

    fast = _fast_path(kind, opts)
    if fast is None:
        return refanged

    def plain_first(raw: str) -> Result:
        # A value the fast path recognizes needs no refang prefilter (see _fast_path).
        if len(raw) > chars_max:
            return too_long
        result = fast(raw)
        return result if result is not None else refanged(raw)

    return plain_first


def _fast_path(kind: str, opts: NormalizeOptions) -> Callable[[str], Result | None] | None:
    """A function giving the canonical result of a value of ``kind`` that refanging would
    leave unchanged and that is (nearly) canonical already, and None for any other value:
    the bulk of a dump's e-mail and IP columns, at a fraction of the cost (tested equal)."""
    if kind == KIND_EMAIL:
        return functools.partial(canonicalize_plain_email, opts=opts)
    if kind == KIND_IP:
        return canonicalize_plain_ip
    return None


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
