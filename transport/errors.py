"""The one exception hierarchy of aiowt.

`AiowtError` is the root. Below it, errors are split the way h11 splits them:
`PeerError` when the other side did something wrong, `UsageError` when the program
used the API wrong. Each carries the code it maps to on the wire: an HTTP status for
handshake errors, a WebTransport application error code for session errors.
"""

from __future__ import annotations

from collections.abc import Sequence

from .codes import CloseCode

__all__ = [
    "AiowtError",
    "DatagramTooLarge",
    "FrameTooLarge",
    "HandshakeError",
    "MalformedFrame",
    "MalformedQuery",
    "PeerError",
    "Rejected",
    "SessionClosedError",
    "StreamClosedError",
    "UsageError",
    "WriteBufferFull",
]


class AiowtError(Exception):
    """Root of every exception aiowt raises on purpose."""


class UsageError(AiowtError):
    """The program used the API wrong (a bug in the caller, not the peer)."""


class PeerError(AiowtError):
    """The peer did something wrong; `code` is the close code the session is closed with."""

    code: int = CloseCode.PROTOCOL_ERROR

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MalformedFrame(PeerError):
    """A datagram or stream frame was not valid msgpack, or its length prefix was corrupt."""

    code = CloseCode.MALFORMED_MESSAGE


class FrameTooLarge(PeerError):
    """A frame or message announced or reached a size above the configured limit."""

    code = CloseCode.MESSAGE_TOO_LARGE


class MalformedQuery(PeerError):
    """A query string that `parse_query` refuses; the message says why (never the value)."""


class Rejected(AiowtError):
    """Raised by middleware to refuse a session on the CONNECT response.

    One boundary (the server's handshake step) turns it into a response with
    `status`, the `reason` as `wt-reject-reason` header, and any extra `headers`.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not 400 <= status <= 599:
            raise UsageError(f"a rejection needs a 4xx or 5xx status, got {status}")
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        self.middleware: str | None = None
        """The middleware that raised it; set by the chain as it passes through."""


class HandshakeError(AiowtError):
    """The client's CONNECT was answered with a non-2xx status, or never answered."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        # Status 0: no HTTP answer (the connection failed first); say only why.
        said = f"{status} {reason}" if status else reason
        super().__init__(f"handshake failed: {said}".rstrip())
        self.status = status
        self.reason = reason
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)


class SessionClosedError(AiowtError):
    """An operation on a session that has already closed."""

    def __init__(self, code: int = 0, reason: str = "") -> None:
        super().__init__(f"session closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason


class StreamClosedError(AiowtError):
    """An operation on a stream whose direction has ended or been reset."""

    def __init__(self, stream_id: int, message: str = "stream closed", *, code: int = 0) -> None:
        super().__init__(f"stream {stream_id}: {message}")
        self.stream_id = stream_id
        self.code = code


class DatagramTooLarge(UsageError):
    """A datagram larger than the session's negotiated maximum was sent.

    aioquic would otherwise keep it at the head of its queue forever and block every
    later datagram, so the size is checked before queueing.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"datagram of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class WriteBufferFull(PeerError):
    """The peer does not read fast enough: a stream's send buffer passed its bound."""

    code = CloseCode.SLOW_CONSUMER
