"""The one error tree of Heimdall.

Every error that reaches a user names what went wrong, where, and what to do.
Peers' faults (``RemoteProtocolError``) are kept apart from our own
(``LocalProtocolError``) so the sync agent can tell "they sent garbage" from
"we are broken".
"""

from __future__ import annotations


class HeimdallError(Exception):
    """Root of every error Heimdall raises on purpose."""


class ConfigError(HeimdallError):
    """Configuration is invalid: names the key, the value and what is allowed."""


class EncodingError(HeimdallError):
    """Bytes are not a canonical encoding (non-canonical, oversized, malformed)."""


class IntegrityError(HeimdallError):
    """Stored or received data fails a checksum, a hash or a signature.

    Carries the position so an operator can find the bad bytes.
    """

    def __init__(
        self,
        message: str,
        *,
        feed: str | None = None,
        segment: str | None = None,
        offset: int | None = None,
        seq: int | None = None,
    ) -> None:
        self.feed = feed
        self.segment = segment
        self.offset = offset
        self.seq = seq
        where = [
            f"{name}={value}"
            for name, value in (
                ("feed", feed),
                ("segment", segment),
                ("offset", offset),
                ("seq", seq),
            )
            if value is not None
        ]
        super().__init__(message + (f" ({', '.join(where)})" if where else ""))


class ForkDetected(IntegrityError):
    """A feed presented two histories; the proof is kept on disk."""


class FeedBroken(HeimdallError):
    """A write to this feed failed (a full disk, an I/O error) and its writer refuses
    every later one until the feed is closed and reopened (recovery then cuts a torn
    batch back to the last signed checkpoint)."""


class FeedStopped(HeimdallError):
    """A feed was stopped after an integrity failure or a fork; nothing more is accepted."""


class FeedBusy(HeimdallError):
    """Another process holds the feed's writer lock (one writer per feed).

    ``held`` says which feed and who holds it; ``advice`` what to do, which a command
    replaces with advice for itself (:meth:`advise`): an erasure request is not told to
    upload a dump.
    """

    def __init__(self, held: str, advice: str) -> None:
        super().__init__(f"{held}; {advice}")
        self.held = held
        self.advice = advice

    def __reduce__(self) -> tuple[type[FeedBusy], tuple[str, str]]:
        return type(self), (self.held, self.advice)  # from a worker process, whole

    def advise(self, advice: str) -> FeedBusy:
        """The same refusal with ``advice`` instead."""
        return FeedBusy(self.held, advice)


class StaleLogError(HeimdallError):
    """The log is behind its own last signed head (restored backup or copied key)."""


class KeyMaterialError(HeimdallError):
    """A key is missing, unreadable or has unsafe permissions."""


class NormalizeError(HeimdallError):
    """A value cannot be canonicalized; ``reason`` says why."""


class IngestError(HeimdallError):
    """An input file cannot be ingested at all (as opposed to one bad record)."""


class UnsupportedInput(IngestError):
    """The input is not a dump format at all (binary, UTF-16, ...): HTTP 415."""


class PiiError(HeimdallError):
    """PII policy or key material problem; never carries the plaintext."""


class ShreddedError(PiiError):
    """The data key of a subject was destroyed; the value is gone for good."""


class GraphError(HeimdallError):
    """Projection or graph store failure."""


class UnknownEventError(GraphError):
    """The projector met an event kind or schema version it does not know."""


class DatabaseUnavailable(GraphError):
    """The graph database cannot be reached (retry with backoff)."""


class QueryError(HeimdallError):
    """A query is malformed (unknown kind, bad value)."""


class NotFound(HeimdallError):
    """The thing asked for is not known."""


class LocalProtocolError(HeimdallError):
    """We broke the protocol (a bug on our side)."""


class RemoteProtocolError(HeimdallError):
    """A peer or a bundle broke the protocol (their fault, input is untrusted)."""
