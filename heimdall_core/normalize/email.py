"""E-mail addresses (kind ``email``).

Rules:

* Trimmed, then split at the last ``@`` into a local part and a domain.
* The domain is canonicalized as a domain name (see
  :mod:`heimdall_core.normalize.domain`: lowercase, A-labels, no trailing
  dot). Address literals (``user@[192.0.2.1]``) are rejected: mailbox
  providers do not use them and breach data holding them is junk.
* The local part is lowercased by default, as breach-lookup services and
  MISP do: virtually every provider treats local parts case-insensitively,
  though RFC 5321 allows otherwise, hence
  ``NormalizeOptions.email_keep_local_case``. Non-ASCII local parts
  (RFC 6531) are put in Unicode NFC.
* The local part is an RFC 5321 dot-string: atoms of letters, digits and
  ``!#$%&'*+-/=?^_`{|}~`` (and non-ASCII), separated by single dots, with no
  leading or trailing dot. Quoted local parts (``"john doe"@example.com``)
  are rejected: real mailboxes almost never use them, and their quoting and
  escaping rules would give one mailbox several spellings. At most 64
  octets (UTF-8) in the local part and 254 in the whole address (RFC 5321
  4.5.3.1, a path of 256 octets less the angle brackets).
* Provider folding, only for the canonical domains configured:
  ``email_fold_dots_domains`` removes dots (``j.doe@gmail.com`` ->
  ``jdoe@gmail.com``), then ``email_strip_plus_domains`` removes a ``+tag``
  (``a+news@x`` -> ``a@x``) unless what is left would not be a valid local
  part (``+news@x``, or ``a.+news@x`` without dot folding).
* A local part that still reads as a defang marker after refanging and
  folding (``{{.}}`` refangs to ``{.}``; ``{a.t}`` folds to ``{at}``) is
  rejected (code ``defang_marker``): it has no stable canonical text.
* ``display`` is the address with the U-label domain when the domain is an
  IDN. Attributes: ``domain`` (canonical) and ``registrable_domain``.
"""

from __future__ import annotations

import re
import unicodedata

from heimdall_core.normalize.domain import canonicalize_domain
from heimdall_core.normalize.model import (
    DEFAULT,
    KIND_EMAIL,
    Canonical,
    NormalizeOptions,
    Rejected,
    Result,
    new_canonical,
    rejected,
)
from heimdall_core.normalize.refang import has_marker, maybe_defanged

LOCAL_OCTETS_MAX = 64
ADDRESS_OCTETS_MAX = 254

_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\U0010ffff]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")

# A plain address: lowercase ASCII dot-string local part, lowercase ASCII host name. It
# holds no character a defang marker or a defanged scheme needs ("[", "(", "{", "\\",
# ":") and no whitespace, so refanging leaves it unchanged; its local part is already a
# valid dot-string in lowercase (a subset of ``_DOT_STRING``).
_PLAIN_ADDRESS = re.compile(r"[a-z0-9_+\-]+(?:\.[a-z0-9_+\-]+)*@[a-z0-9.\-]+")

_NO_AT = rejected(KIND_EMAIL, "missing_at", "no @ between local part and domain")
_EMPTY_LOCAL = rejected(KIND_EMAIL, "empty_local", "empty local part")
_EMPTY_DOMAIN = rejected(KIND_EMAIL, "empty_domain", "empty domain")
_LOCAL_TOO_LONG = rejected(KIND_EMAIL, "local_too_long", f"local part over {LOCAL_OCTETS_MAX} octets")
_ADDRESS_TOO_LONG = rejected(KIND_EMAIL, "too_long", f"address over {ADDRESS_OCTETS_MAX} octets")
_QUOTED = rejected(KIND_EMAIL, "quoted_local", "quoted local parts are not supported")
_LITERAL = rejected(KIND_EMAIL, "address_literal", "address literals ([...]) are not supported")
_MARKER = rejected(KIND_EMAIL, "defang_marker", "local part reads as a defanged marker")
_BAD_LOCAL = rejected(
    KIND_EMAIL, "invalid_local", "local part is not a dot-string (bad character or dot placement)"
)


def canonicalize_email(raw: str, opts: NormalizeOptions = DEFAULT) -> Result:
    """Canonicalize an e-mail address (see the module docstring)."""
    text = raw.strip()
    local, at, domain_text = text.rpartition("@")
    if not at:
        return _NO_AT
    if not local:
        return _EMPTY_LOCAL
    if not domain_text:
        return _EMPTY_DOMAIN
    if domain_text[0] == "[":
        return _LITERAL
    local_or_error = _local(local, opts)
    if isinstance(local_or_error, Rejected):
        return local_or_error
    domain = _domains.get(domain_text) or _domain(domain_text)
    if isinstance(domain, Rejected):
        return domain
    domain_value, domain_display, attrs = domain
    local = local_or_error
    if opts.email_fold_dots_domains or opts.email_strip_plus_domains:
        local = _fold(local, domain_value, opts)
    if maybe_defanged(local) and has_marker(local):
        # A marker survived refanging (nested: "{{.}}" -> "{.}") or folding made
        # one ("{a.t}" -> "{at}"); refanging the value again would change it.
        return _MARKER
    value = f"{local}@{domain_value}"
    if len(value) > ADDRESS_OCTETS_MAX or (not value.isascii() and _octets(value) > ADDRESS_OCTETS_MAX):
        return _ADDRESS_TOO_LONG
    display = f"{local}@{domain_display}" if domain_display else None
    return new_canonical(Canonical, (KIND_EMAIL, value, display, attrs))


def canonicalize_plain_email(raw: str, opts: NormalizeOptions = DEFAULT) -> Result | None:
    """The result of ``canonicalize_email(refang(raw), opts)`` if ``raw`` is a plain address
    (see ``_PLAIN_ADDRESS``) and ``opts`` folds no provider's addresses, else None.

    The common case of a dump, in fewer steps (tested equal): no refang prefilter, no
    trimming, no local-part regex or case folding beyond the one match."""
    if opts.email_fold_dots_domains or opts.email_strip_plus_domains or not _PLAIN_ADDRESS.fullmatch(raw):
        return None
    local, _, domain_text = raw.rpartition("@")
    if len(local) > LOCAL_OCTETS_MAX:
        return _LOCAL_TOO_LONG
    domain = _domains.get(domain_text) or _domain(domain_text)
    if isinstance(domain, Rejected):
        return domain
    domain_value, domain_display, attrs = domain
    value = f"{local}@{domain_value}"
    if len(value) > ADDRESS_OCTETS_MAX or (not value.isascii() and _octets(value) > ADDRESS_OCTETS_MAX):
        return _ADDRESS_TOO_LONG
    display = f"{local}@{domain_display}" if domain_display else None
    return new_canonical(Canonical, (KIND_EMAIL, value, display, attrs))


_DomainPart = tuple[str, str | None, tuple[tuple[str, str], ...]]

DOMAINS_REMEMBERED_MAX = 1 << 16
"""E-mail domains whose part of the result is remembered (~300 bytes each: ~20 MiB).
A dump's addresses share a few domains: one dict lookup then replaces canonicalizing the
domain and building the attributes per address. Reset when full."""

# Raw domain text -> (canonical value, display form, the address's attributes) or why
# it is rejected, as the e-mail's reason.
_domains: dict[str, _DomainPart | Rejected] = {}


def _domain(domain_text: str) -> _DomainPart | Rejected:
    domain = canonicalize_domain(domain_text)
    part: _DomainPart | Rejected
    if isinstance(domain, Rejected):
        part = Rejected(KIND_EMAIL, f"domain.{domain.reason}")
    else:
        part = (domain.value, domain.display, (("domain", domain.value), *domain.attrs))
    if len(_domains) >= DOMAINS_REMEMBERED_MAX:
        _domains.clear()
    _domains[domain_text] = part
    return part


def _local(local: str, opts: NormalizeOptions) -> str | Rejected:
    if local[0] == '"':
        return _QUOTED
    if local.isascii():
        if len(local) > LOCAL_OCTETS_MAX:
            return _LOCAL_TOO_LONG
        if not _DOT_STRING.fullmatch(local):
            return _BAD_LOCAL
        return local if opts.email_keep_local_case else local.lower()
    return _local_unicode(local, opts)


def _local_unicode(local: str, opts: NormalizeOptions) -> str | Rejected:
    """An RFC 6531 local part: NFC, no spaces or controls (they are never part of a mailbox)."""
    if not opts.email_keep_local_case:
        local = local.lower()
    local = unicodedata.normalize("NFC", local)
    if _octets(local) > LOCAL_OCTETS_MAX:
        return _LOCAL_TOO_LONG
    if not _DOT_STRING.fullmatch(local) or any(
        unicodedata.category(char)[0] in "ZC" for char in local if not char.isascii()
    ):
        return _BAD_LOCAL
    return local


def _fold(local: str, domain: str, opts: NormalizeOptions) -> str:
    # Dots first: then the part before "+" is dot-free, so stripping the tag
    # can only leave a valid atom, and folding twice changes nothing more.
    if domain in opts.email_fold_dots_domains:
        local = local.replace(".", "")
    if domain in opts.email_strip_plus_domains:
        untagged = local.partition("+")[0]
        # "a.+news" would leave "a.", no longer a dot-string: keep the tag then.
        if _DOT_STRING.fullmatch(untagged):
            local = untagged
    if not local.isascii():
        # Removing a dot can join a base letter to a combining mark ("s.\u0301"):
        # compose again so the folded form is NFC, as an unfolded one is.
        local = unicodedata.normalize("NFC", local)
    return local


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))
