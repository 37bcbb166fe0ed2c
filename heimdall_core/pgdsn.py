"""PostgreSQL DSNs (``graph.postgres_dsn``): checked once when the configuration loads,
and redacted wherever one is shown.

A DSN holds the role's password, so neither function ever returns it: problems are told
in words that do not quote the DSN, and the redacted form replaces every password by
``***``. Light on purpose (no asyncpg): the configuration and ``heimdall db status`` use it.
"""

from __future__ import annotations

import re

SCHEMES = ("postgresql", "postgres")  # what the driver (asyncpg) accepts
PORT_MIN, PORT_MAX = 1, 65535
FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
_MASK = "***"
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.%\w]*\]|[^:\[\]]*)(?::(?P<port>[0-9]*))?")


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` cannot be used, never quoting it; None when it can (or is empty: the
    database of ``heimdall start-db`` is used then)."""
    if not dsn:
        return None
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return (f"not a URL; write {FORM} (the key=value form of libpq is not supported; "
                "percent-encode special characters)")
    if scheme.lower() not in SCHEMES:
        return f"the scheme is not one of {', '.join(s + '://' for s in SCHEMES)}; write {FORM}"
    netloc, _ = _netloc_split(rest)
    if netloc.count("@") > 1:
        return "more than one '@' before the host; write an '@' of the user name or password as %40"
    for host in netloc.rpartition("@")[2].split(","):  # the driver takes a list of hosts
        parsed = _HOST_PORT.fullmatch(host)
        if parsed is None:
            return (f"a host or port cannot be read; a port is a number {PORT_MIN}..{PORT_MAX}, "
                    "an IPv6 address is written in [brackets], and a '/', '?' or '#' of the "
                    "user name or password is percent-encoded")
        if parsed["port"] and not PORT_MIN <= int(parsed["port"]) <= PORT_MAX:
            return f"a port is not in {PORT_MIN}..{PORT_MAX}"
    return None


def redact_dsn(dsn: str) -> str:
    """A DSN fit for logs and messages: any password replaced by ``***``. Never raises,
    whatever the DSN (a message about a bad DSN must not become a traceback)."""
    if "://" not in dsn:  # key=value form
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", rf"\1{_MASK}", dsn)
    scheme, _, rest = dsn.partition("://")
    # Up to the last '@' anywhere: a password with an unencoded '/', '?' or '#' is masked
    # whole too (an '@' further on, in the query, only makes more of it masked).
    userinfo, at, rest = rest.rpartition("@")
    head = ""
    if at:
        user, colon, _ = userinfo.partition(":")
        head = f"{user}:{_MASK}@" if colon else f"{userinfo}@"
    rest = re.sub(r"([?&]password=)[^&#]*", rf"\1{_MASK}", rest)
    return f"{scheme}://{head}{rest}"


def _netloc_split(rest: str) -> tuple[str, str]:
    """What follows ``scheme://``, cut into the user, password and hosts part and the rest
    (as the driver cuts it)."""
    end = re.search(r"[/?#]|$", rest)
    assert end is not None  # "$" always matches
    return rest[:end.start()], rest[end.start():]


__all__ = ["FORM", "SCHEMES", "dsn_problem", "redact_dsn"]
