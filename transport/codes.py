"""Application close codes aiowt uses on WebTransport sessions and streams."""

from __future__ import annotations

import enum

__all__ = ["CloseCode", "StreamErrorCode"]


class CloseCode(enum.IntEnum):
    """Codes carried by the close-session capsule (32-bit application error codes)."""

    NORMAL = 0
    """Closed on purpose by either side."""
    GOING_AWAY = 0x1001
    """The server is shutting down."""
    INTERNAL_ERROR = 0x1002
    """The handler raised; the session was closed to contain the failure."""
    PROTOCOL_ERROR = 0x1003
    """The peer broke the WebTransport or aiowt framing rules."""
    MALFORMED_MESSAGE = 0x1004
    """A msgpack frame or datagram could not be decoded."""
    MESSAGE_TOO_LARGE = 0x1005
    """A frame or message exceeded the configured size limit."""
    TIMEOUT = 0x1006
    """The session reached its maximum lifetime."""
    IDLE_TIMEOUT = 0x1007
    """Nothing was received for longer than the idle limit."""
    RATE_LIMITED = 0x1008
    """The peer sent faster than its token bucket allows."""
    SLOW_CONSUMER = 0x1009
    """The peer did not read fast enough; its outbound buffer passed its bound."""
    ABORTED = 0x100A
    """The connection vanished without a close capsule (set locally, never sent)."""


class StreamErrorCode(enum.IntEnum):
    """Codes for resetting single streams."""

    CANCELLED = 0
    REFUSED = 0x2001
    """The stream was refused, for example by `DepthGuard`."""
    INTERNAL_ERROR = 0x2002
    MALFORMED_MESSAGE = 0x2003
    MESSAGE_TOO_LARGE = 0x2004
