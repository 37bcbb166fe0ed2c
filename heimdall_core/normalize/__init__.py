"""Canonical indicators: pure functions from raw field values to canonical text.

One entrance, :func:`canonicalize` (kind, raw value, options) -> :class:`Canonical`
or :class:`Rejected`; :func:`detect_kind` for a value of unknown kind;
:func:`refang` to undo defanging. No I/O: the only file ever read is the
Public Suffix List shipped inside the ``publicsuffixlist`` package, once.
The rules of each kind are in the docstring of its module and in
docs/canonicalization.md.
"""

from heimdall_core.normalize.detect import detect_kind
from heimdall_core.normalize.dispatch import REFANG_KINDS, canonicalize, canonicalizer_for
from heimdall_core.normalize.model import (
    DEFAULT,
    KINDS,
    VALUE_CHARS_MAX,
    Canonical,
    NormalizeOptions,
    Rejected,
    Result,
    UnknownKind,
)
from heimdall_core.normalize.refang import refang

__all__ = [
    "DEFAULT",
    "KINDS",
    "REFANG_KINDS",
    "VALUE_CHARS_MAX",
    "Canonical",
    "NormalizeOptions",
    "Rejected",
    "Result",
    "UnknownKind",
    "canonicalize",
    "canonicalizer_for",
    "detect_kind",
    "refang",
]
