"""Free-text kinds: username, password, phone, name, other.

* ``username``: trimmed, Unicode NFC; case is kept. Services differ: many
  compare usernames case-insensitively, some do not, and a dump does not say
  which. Folding case would merge accounts that may be different people;
  keeping it only costs a missed merge, which a case-insensitive query can
  still find. Control characters are rejected (never part of a username).
* ``password``: returned exactly as given, not even trimmed (spaces can be
  part of it). Only the empty string is rejected. Never logged: reasons do not
  quote values, for every kind.
* ``phone``: the ASCII digits, with a leading ``+`` kept (E.164-like).
  Spaces, dots, hyphens, slashes and parentheses are separators and dropped;
  any other character (letters, an extension ``x123``) is rejected. 5 to 15
  digits (E.164 allows at most 15). A leading ``00`` is not turned into
  ``+``: the international prefix differs by country (``011`` in North
  America), so that would be a guess.
* ``name``: trimmed, runs of whitespace collapsed to one space, Unicode NFC;
  case kept. Control characters are rejected.
* ``other``: trimmed; empty is rejected.
"""

from __future__ import annotations

import re
import unicodedata

from heimdall_core.normalize.model import (
    KIND_NAME,
    KIND_OTHER,
    KIND_PASSWORD,
    KIND_PHONE,
    KIND_USERNAME,
    Canonical,
    Result,
    new_canonical,
    rejected,
)

PHONE_DIGITS_MIN = 5
PHONE_DIGITS_MAX = 15  # ITU-T E.164

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PHONE_SEPARATORS = str.maketrans("", "", " .-/()\t")
_ASCII_DIGITS = "0123456789"


def _nfc(text: str) -> str:
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", text)


def canonicalize_username(raw: str) -> Result:
    text = _nfc(raw).strip()
    if not text:
        return rejected(KIND_USERNAME, "empty", "no username")
    # ASCII text is printable exactly when it has no control character (\x00-\x1f, \x7f):
    # one C call instead of a regex search, on the ingest hot path.
    if not text.isprintable() if text.isascii() else _CONTROL.search(text):
        return rejected(KIND_USERNAME, "control_char", "control character in a username")
    return new_canonical(Canonical, (KIND_USERNAME, text, None, ()))


def canonicalize_password(raw: str) -> Result:
    if not raw:
        return rejected(KIND_PASSWORD, "empty", "empty password")
    return Canonical(KIND_PASSWORD, raw)


def canonicalize_phone(raw: str) -> Result:
    text = raw.strip()
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    digits = digits.translate(_PHONE_SEPARATORS)
    if not digits.isascii() or digits.strip(_ASCII_DIGITS):
        return rejected(KIND_PHONE, "invalid_char", "only digits, a leading + and separators")
    if not PHONE_DIGITS_MIN <= len(digits) <= PHONE_DIGITS_MAX:
        return rejected(
            KIND_PHONE,
            "digit_count",
            f"a phone number has {PHONE_DIGITS_MIN} to {PHONE_DIGITS_MAX} digits",
        )
    return Canonical(KIND_PHONE, f"+{digits}" if plus else digits)


def canonicalize_name(raw: str) -> Result:
    text = " ".join(_nfc(raw).split())
    if not text:
        return rejected(KIND_NAME, "empty", "no name")
    if _CONTROL.search(text):
        return rejected(KIND_NAME, "control_char", "control character in a name")
    return Canonical(KIND_NAME, text)


def canonicalize_other(raw: str) -> Result:
    text = raw.strip()
    if not text:
        return rejected(KIND_OTHER, "empty", "empty value")
    return Canonical(KIND_OTHER, text)
