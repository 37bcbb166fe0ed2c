"""Registrable domains from the Public Suffix List (PSL).

The registrable domain ("eTLD+1") of ``a.b.example.co.uk`` is
``example.co.uk``: the public suffix plus one label. It is the unit that one
party controls, so it is what an analyst pivots on.

Both sections of the list are used, ICANN and private. Private entries
(``github.io``, ``blogspot.com``, ``s3.amazonaws.com`` ...) are platforms
where unrelated customers own sibling names; with only the ICANN section,
``evil.github.io`` and every honest ``*.github.io`` would share the
registrable domain ``github.io`` and one bad page would tar them all. This is
also how browsers scope cookies. Unknown TLDs follow the PSL's default rule
``*`` (the TLD itself is the public suffix), so ``a.b.example.internal``
gives ``example.internal``. A name that is itself a public suffix has no
registrable domain.

The list is the one shipped inside the ``publicsuffixlist`` package: it is
read once, on first use, from the installed package (never fetched), so a
given install always gives the same answer.
"""

from __future__ import annotations

import functools
from typing import Final

from publicsuffixlist import PublicSuffixList


@functools.cache
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList(accept_unknown=True, only_icann=False)


def registrable_domain(name: str) -> str | None:
    """The registrable domain of a canonical (A-label) domain name, or None.

    ``name`` must already be canonical: lowercase, A-labels, no trailing dot.
    Not cached here: callers cache whole canonical results.
    """
    result = _suffix_list().privatesuffix(name)
    return result if isinstance(result, str) else None


DOCUMENTATION_SUFFIXES: Final = frozenset({"example", "test"})
"""Top-level names RFC 2606 reserves for documentation and testing. No registry lists
them, but feeds, samples and test data use them for the names they show."""


def has_known_suffix(name: str) -> bool:
    """Whether a canonical (A-label) domain name ends in a suffix the list names, ICANN
    or private, or in a documentation name (``DOCUMENTATION_SUFFIXES``): not only the
    list's default rule ``*``, which makes any last label a suffix (``maria.k``,
    ``john.smith``). A name with no known suffix is no name anyone can register or
    resolve on the Internet, so it may well be something else, such as a user name."""
    if name.rpartition(".")[2] in DOCUMENTATION_SUFFIXES:
        return True
    return _suffix_list().publicsuffix(name, accept_unknown=False) is not None
