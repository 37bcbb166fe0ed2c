"""Refanging: undo the "defanging" that analysts apply to indicators.

Reports and feeds write indicators so that nobody clicks them by accident
(``hxxp://evil[.]example``). Before an e-mail, ip, cidr, domain or url value
is canonicalized, these markers are undone (the dispatcher does it; kinds such
as password or name are never refanged, their brackets are data):

* scheme: ``hxxp`` -> ``http``, ``hxxps`` -> ``https``, ``fxp`` -> ``ftp``
  (case-insensitive, only at the start, only before ``:`` or ``[:]``);
* dot: ``[.]`` ``(.)`` ``{.}`` ``[dot]`` ``(dot)`` ``{dot}`` and ``\\.``;
* at: ``[@]`` ``(@)`` ``{@}`` ``[at]`` ``(at)`` ``{at}``;
* colon: ``[:]`` (so ``[:]//`` becomes ``://``) and ``[://]``.

Whitespace around a bracketed dot or at marker belongs to the marker
(``evil [.] example`` -> ``evil.example``). Word forms without brackets
(``evil dot example``) are not refanged: that would be guessing. Markers are
case-insensitive (``[DOT]``).
"""

from __future__ import annotations

import re

_DOT = "."
_AT = "@"

_MARKERS = re.compile(
    r"""
      (?P<dot>\s*(?:\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\)|\{dot\})\s*|\\\.)
    | (?P<at>\s*(?:\[@\]|\(@\)|\{@\}|\[at\]|\(at\)|\{at\})\s*)
    | (?P<slashes>\[://\])
    | (?P<colon>\[:\])
    """,
    re.IGNORECASE | re.VERBOSE,
)
_SCHEME = re.compile(r"(?P<scheme>hxxps|hxxp|fxp)(?=:|\[:\])", re.IGNORECASE)
_SCHEMES = {"hxxp": "http", "hxxps": "https", "fxp": "ftp"}
# First four characters of a defanged scheme, lowercased.
SCHEME_HEADS = frozenset({"hxxp", "fxp:", "fxp["})
_REPLACEMENTS = {"dot": _DOT, "at": _AT, "slashes": "://", "colon": ":"}


def _marker(match: re.Match[str]) -> str:
    group = match.lastgroup
    assert group is not None
    return _REPLACEMENTS[group]


def refang(raw: str) -> str:
    """Undo defanging markers; a value without markers is returned as is."""
    # Hot path: most values carry no marker, so test with cheap C-level scans
    # before paying for a regex substitution.
    scheme = raw[:16].lstrip()[:4].lower() in SCHEME_HEADS
    if not scheme and "[" not in raw and "(" not in raw and "{" not in raw and "\\" not in raw:
        return raw
    text = _MARKERS.sub(_marker, raw)
    if scheme:
        stripped = text.lstrip()
        match = _SCHEME.match(stripped)
        if match:
            text = _SCHEMES[match["scheme"].lower()] + stripped[match.end() :]
    return text


def maybe_defanged(raw: str) -> bool:
    """False only if ``refang(raw) == raw`` (tested): no character a marker starts with,
    no defanged scheme. A few C-level scans, much cheaper than a call of ``refang``.
    Inlined in ``dispatch.canonicalizer_for`` (the per-field hot path): change both."""
    return (
        "[" in raw
        or "(" in raw
        or "{" in raw
        or "\\" in raw
        or raw[:4].lower() in SCHEME_HEADS
        or raw[:1].isspace()
    )


# Percent-encodings of the characters that make up a bracketed marker.
_MARKER_ESCAPES = str.maketrans(
    {"[": "%5B", "]": "%5D", "(": "%28", ")": "%29", "{": "%7B", "}": "%7D", "\\": "%5C"}
)


def has_marker(text: str) -> bool:
    """True if ``refang`` would change ``text``."""
    return refang(text) != text


def escape_markers(url: str) -> str:
    """Percent-encode the brackets of every marker in a canonical URL.

    A canonical URL must survive being refanged and canonicalized again
    unchanged. Markers in raw input are refanged before parsing, so one is
    left in a canonical URL only by nesting (``[[.]]`` refangs to ``[.]``) or
    decoding (``[%2E]`` -> ``[.]``); encoding its brackets, which RFC 3986
    does not allow raw anyway except for the parentheses, keeps the value
    stable.
    """
    if not has_marker(url):
        return url
    return _MARKERS.sub(lambda match: match.group(0).translate(_MARKER_ESCAPES), url)
