"""What happens on a WebTransport session: frozen dataclasses named in the past tense.

One vocabulary, in aioquic's style (the protocol reports what happened; it calls no
hooks), read in three places:

- taps (`SessionTap.observe`) see every event of a session first, at the transport, and
  may veto an inbound datagram, stream or stream chunk;
- a session's handler actor receives the inbound events as its messages (`Handler`
  turns them into its hooks: `on_datagram`, `on_stream`, ...);
- with no actor attached (the Python client), the pull API queues them
  (`Session.receive_datagram`, `accept_stream`, `Stream.read`).

Inbound events (`InboundEvent`) come from the peer or the connection; the others exist
for taps only: `SessionAccepted` when the server sends its 200, `DatagramSent` and
`StreamDataSent` for what the local side sends, `StreamClosed` when both directions of
a stream have ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import CloseInfo
    from .session import Stream

__all__ = [
    "DatagramReceived",
    "DatagramSent",
    "EventSink",
    "InboundEvent",
    "SessionAccepted",
    "SessionClosed",
    "SessionDraining",
    "SessionEvent",
    "StreamClosed",
    "StreamDataReceived",
    "StreamDataSent",
    "StreamOpened",
    "StreamReset",
]


# --- inbound: what the handler receives --------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """The peer sent a datagram."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream (bidirectional or unidirectional)."""

    stream: Stream


@dataclass(frozen=True, slots=True)
class StreamDataReceived:
    """Bytes arrived on a stream, as the transport delivered them (not one frame each);
    `end_stream` when the peer finished its sending side with them."""

    stream: Stream
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer aborted its sending side of a stream with an application `code`."""

    stream: Stream
    code: int


@dataclass(frozen=True, slots=True)
class SessionDraining:
    """The peer asked to wind the session down (DRAIN_WEBTRANSPORT_SESSION)."""


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended, however it ended: `info` says how and who closed it."""

    info: CloseInfo


# --- for taps only -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionAccepted:
    """The server accepted the session (its 200 is on the way); the first event a tap sees."""


@dataclass(frozen=True, slots=True)
class DatagramSent:
    """The local side queued a datagram to the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StreamDataSent:
    """The local side wrote bytes to a stream (one event per write)."""

    stream: Stream
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Both directions of a stream have ended, cleanly or not; the session forgot it."""

    stream: Stream


InboundEvent = (
    DatagramReceived
    | StreamOpened
    | StreamDataReceived
    | StreamReset
    | SessionDraining
    | SessionClosed
)
"""What a session's handler (or the pull API) receives, in the order it happened."""

SessionEvent = InboundEvent | SessionAccepted | DatagramSent | StreamDataSent | StreamClosed
"""Everything a tap sees."""

EventSink = Callable[[InboundEvent], None]
"""Where a session hands its inbound events once one is attached (`Session.attach`).

Called on the event loop, synchronously, in order; it must not block."""
