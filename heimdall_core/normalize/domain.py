"""Domain names (kind ``domain``).

Rules, in order:

1. Surrounding whitespace is trimmed; one trailing dot (the DNS root) is
   removed, so ``example.com.`` and ``example.com`` are one indicator.
2. Internationalized names follow IDNA 2008 with the UTS #46 mapping,
   nontransitional (``ß`` stays ``ß``, as browsers do since 2017): the input
   is mapped (case folding, width folding, ``。`` to ``.``), each non-ASCII
   label is converted to its A-label (``xn--...``), and each A-label in the
   input is checked to decode to a valid U-label and to be the canonical
   encoding of it. The canonical ``value`` is the all-ASCII A-label form;
   ``display`` holds the U-label form when it differs. If any label holds a
   right-to-left character, every label must satisfy the RFC 5893 Bidi rule.
3. ASCII labels are letters, digits, hyphens and underscores, do not begin or
   end with a hyphen, and are 1-63 octets; the whole name is at most 253
   octets. The underscore is a deliberate relaxation of the hostname rules
   (RFC 952/1123, STD3): DNS holds such names (``_dmarc.example.com``) and
   they turn up in passive DNS and malware configurations. It is allowed in
   ASCII labels only, never in the top-level label nor in a U-label (IDNA
   2008 disallows it). Hyphens in the third and fourth positions
   (``r3---sn-abc.googlevideo.com``) are allowed in ASCII labels that do not
   begin with ``xn--``, as the WHATWG URL Standard allows them: real hosts
   use them.
4. Rejected: empty names and empty labels (``a..b``, ``.a``), over-long
   labels or names, any other character (space, ``*``, ``/``, ``:`` ...),
   and an all-numeric top-level label (``1.2.3.4``, ``example.123``): such a
   name is an IP address or no hostname at all.
5. Attribute ``registrable_domain``: the registrable domain from the Public
   Suffix List (see :mod:`heimdall_core.normalize.psl`), absent when the
   name is itself a public suffix (``co.uk``) or has one label.

Pure-ASCII names never reach the ``idna`` package unless a label starts with
``xn--``: this is on the ingest hot path, and results are cached.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import idna

from heimdall_core.normalize.model import KIND_DOMAIN, Canonical, Rejected, Result, rejected
from heimdall_core.normalize.psl import registrable_domain

LABEL_OCTETS_MAX = 63
NAME_OCTETS_MAX = 253
# E-mail domains and hosts of URLs repeat a lot within a dump. An entry costs
# ~400 bytes, so a full cache is ~26 MiB per ingest process.
_CACHE_ENTRIES_MAX = 1 << 16

_ACE_PREFIX = "xn--"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_TOP_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# A whole canonical ASCII name in one C-level match: the hot path.
_ASCII_NAME = re.compile(rf"(?:{_LABEL}\.)*{_TOP_LABEL}")
_ASCII_LABEL = re.compile(_LABEL)
_ASCII_LABEL_CHARS = re.compile(r"[a-z0-9_-]+")
_RTL_CLASSES = frozenset({"R", "AL", "AN"})

_EMPTY = rejected(KIND_DOMAIN, "empty", "no domain name")
_EMPTY_LABEL = rejected(KIND_DOMAIN, "empty_label", "empty label (two dots in a row, or a leading dot)")
_LABEL_TOO_LONG = rejected(KIND_DOMAIN, "label_too_long", f"a label is over {LABEL_OCTETS_MAX} octets")
_NAME_TOO_LONG = rejected(KIND_DOMAIN, "name_too_long", f"name is over {NAME_OCTETS_MAX} octets")
_HYPHEN_EDGE = rejected(KIND_DOMAIN, "hyphen_edge", "a label begins or ends with a hyphen")
_INVALID_CHAR = rejected(
    KIND_DOMAIN, "invalid_char", "only letters, digits, hyphens and underscores may be in a label"
)
_NUMERIC_TLD = rejected(
    KIND_DOMAIN, "numeric_tld", "all-numeric top-level label: an IP address or not a hostname"
)
_TLD_UNDERSCORE = rejected(KIND_DOMAIN, "invalid_char", "underscore in the top-level label")


@dataclass(frozen=True, slots=True)
class _Label:
    ascii: str
    unicode: str


def canonicalize_domain(raw: str) -> Result:
    """Canonicalize a domain name (see the module docstring)."""
    return _canonicalize_cached(raw.strip())


def has_canonical_shape(name: str) -> bool:
    """Whether ``name`` has the shape of a canonical domain: lower-case ASCII labels (a
    label may hold ``_``, the last may not), no trailing dot, a top label that is not all
    digits, at most NAME_OCTETS_MAX. Needs no IDNA or Unicode table, so every version of
    Python and ``idna`` answers the same (``xn--`` labels are taken as they are: whether
    one decodes is a question for those tables)."""
    return (len(name) <= NAME_OCTETS_MAX and _ASCII_NAME.fullmatch(name) is not None
            and not name.rpartition(".")[2].isdigit())


@functools.lru_cache(maxsize=_CACHE_ENTRIES_MAX)
def _canonicalize_cached(text: str) -> Result:
    if text.isascii():
        name = text.lower()
        if name.endswith("."):
            name = name[:-1]
        if _ACE_PREFIX not in name and has_canonical_shape(name):
            return _canonical(name, None)
        return _general(name)
    try:
        mapped = idna.uts46_remap(text, std3_rules=False)
    except idna.IDNAError as error:
        return _idna_rejected(error)
    return _general(mapped[:-1] if mapped.endswith(".") else mapped)


def _canonical(name: str, display: str | None) -> Canonical:
    registrable = registrable_domain(name)
    attrs = (("registrable_domain", registrable),) if registrable else ()
    return Canonical(KIND_DOMAIN, name, display, attrs)


def _general(name: str) -> Result:
    """Label by label: ``name`` is mapped (lowercase), without the root dot."""
    if not name:
        return _EMPTY
    labels: list[_Label] = []
    for text in name.split("."):
        label = _label(text)
        if isinstance(label, Rejected):
            return label
        labels.append(label)
    top = labels[-1].ascii
    if top.isdigit():
        return _NUMERIC_TLD
    if "_" in top:
        return _TLD_UNDERSCORE
    value = ".".join(label.ascii for label in labels)
    if len(value) > NAME_OCTETS_MAX:
        return _NAME_TOO_LONG
    display = ".".join(label.unicode for label in labels)
    if display != value:
        bidi = _check_bidi_domain([label.unicode for label in labels])
        if bidi is not None:
            return bidi
        return _canonical(value, display)
    return _canonical(value, None)


def _label(text: str) -> _Label | Rejected:
    if not text:
        return _EMPTY_LABEL
    if not text.isascii():
        try:
            ascii_label = idna.alabel(text).decode("ascii")
        except idna.IDNAError as error:
            return _idna_rejected(error)
        return _Label(ascii_label, text)
    if len(text) > LABEL_OCTETS_MAX:
        return _LABEL_TOO_LONG
    if text.startswith(_ACE_PREFIX):
        try:
            return _Label(text, idna.ulabel(text))
        except idna.IDNAError as error:
            return _idna_rejected(error)
    if _ASCII_LABEL.fullmatch(text):
        return _Label(text, text)
    if _ASCII_LABEL_CHARS.fullmatch(text):
        return _HYPHEN_EDGE
    return _INVALID_CHAR


def _check_bidi_domain(unicode_labels: list[str]) -> Rejected | None:
    """RFC 5893 section 2: in a domain with an RTL label, every label obeys the Bidi rule."""
    is_bidi_domain = any(
        unicodedata.bidirectional(char) in _RTL_CLASSES
        for label in unicode_labels
        for char in label
        if not char.isascii()
    )
    if not is_bidi_domain:
        return None
    try:
        for label in unicode_labels:
            idna.check_bidi(label, check_ltr=True)
    except idna.IDNAError as error:
        return _idna_rejected(error)
    return None


def _idna_rejected(error: idna.IDNAError) -> Rejected:
    # Only the error's code: its message quotes the input, which may be personal data.
    code = error.code or "invalid"
    if code == "label_too_long":
        return _LABEL_TOO_LONG
    if code in ("domain_too_long", "input_too_long"):
        return _NAME_TOO_LONG
    return rejected(KIND_DOMAIN, "invalid_idna", f"not a valid internationalized name ({code})")
