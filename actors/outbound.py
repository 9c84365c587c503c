"""`OutboundChannel`: a session's server-to-client path, bounded, with a slow-consumer policy.

Why a policy at all: a room (or any fan-out) delivers to many sessions, and a peer that
stops reading (a frozen tab, a dead network) must not cost anyone else anything, nor
let its undelivered data grow without bound. The fan-out side never waits (rooms
`tell` each member); this class decides what a session does with data its peer cannot
take, and does it with synchronous, non-blocking calls only.
"""

from __future__ import annotations

from typing import Any

import structlog

from aiowt.transport.codes import CloseCode
from aiowt.transport.errors import (
    DatagramTooLarge,
    SessionClosedError,
    StreamClosedError,
    UsageError,
    WriteBufferFull,
)
from aiowt.transport.framing import encode_frame, encode_message
from aiowt.transport.session import Session, Stream

__all__ = ["OutboundChannel"]

log = structlog.get_logger("aiowt.outbound")


class OutboundChannel:
    """One session's outbound message stream and datagrams, under a slow-consumer policy.

    The policy, for a peer that cannot keep up:

    - **Stream messages** go, in order, on one server-opened unidirectional stream,
      opened on first use and kept (a new one is opened if the peer stops it). What
      the peer has not acknowledged stays in the stream's send buffer, bounded by
      `max_buffered` bytes (the session's `send_buffer_high`). The write that takes the
      buffer past the bound closes the session with `close_code`
      (`CloseCode.SLOW_CONSUMER`): an ordered, reliable stream cannot skip messages,
      and a buffer allowed to grow would let one peer hold any amount of memory.
    - **Datagrams** are unreliable by contract: when the connection's outbound
      datagram queue is full (the transport's `max_pending_datagrams`), or the datagram
      does not fit this peer's path, it is dropped and counted in `datagrams_dropped`;
      the session stays open.
    - **After the end** (the session closed, for this reason or any other) every send
      returns False and nothing raises: a fan-out may still deliver to a session that
      ended a moment ago.

    Every method is synchronous and never blocks; call them on the session's loop (from
    its handler actor).

    Args:
        session: the session to send on.
        max_buffered: the bound on a stream's unacknowledged bytes; None keeps the
            session's `send_buffer_high`.
        close_code: the close code for a consumer past the bound.

    """

    def __init__(
        self,
        session: Session,
        *,
        max_buffered: int | None = None,
        close_code: int = CloseCode.SLOW_CONSUMER,
    ) -> None:
        if max_buffered is not None:
            if max_buffered <= 0:
                raise UsageError(f"max_buffered must be positive, got {max_buffered}")
            session.send_buffer_high = max_buffered
            # `Stream.drain()` waits for the low-water mark, which must stay below the bound.
            session.send_buffer_low = min(session.send_buffer_low, max_buffered // 2)
        self.session = session
        self.close_code = close_code
        self.frames_sent = 0
        self.datagrams_sent = 0
        self.datagrams_dropped = 0
        """Datagrams dropped because the peer could not take them (queue full, too large)."""
        self.slow = False
        """True once this channel closed the session for being too far behind."""
        self._stream: Stream | None = None

    def __repr__(self) -> str:
        state = "slow" if self.slow else ("closed" if self.session.closed else "open")
        return (
            f"<OutboundChannel {state} frames={self.frames_sent} "
            f"datagrams={self.datagrams_sent} dropped={self.datagrams_dropped}>"
        )

    @property
    def max_buffered(self) -> int:
        return self.session.send_buffer_high

    # -- streams ----------------------------------------------------------------------------

    def send_message(self, message: Any) -> bool:
        """Send one msgpack object as a frame on the outbound stream (see `send_frame`)."""
        return self.send_frame(encode_frame(message, max_size=self.session.max_message_size))

    def send_frame(self, frame: bytes) -> bool:
        """Write an encoded frame on the outbound stream.

        Returns False when the session has ended, or when this write put the peer past
        the bound (the session is then closed with `close_code`).
        """
        if self.session.closed:
            return False
        try:
            stream = self._stream
            if stream is None or not stream.writable:
                stream = self._stream = self.session.open_stream(unidirectional=True)
            stream.write(frame)
        except WriteBufferFull as full:
            # The frame is queued, but the peer is more than the bound behind: give up on
            # it rather than hold ever more of its data.
            self._close_slow(str(full))
            return False
        except (SessionClosedError, StreamClosedError):
            return False
        self.frames_sent += 1
        return True

    def _close_slow(self, detail: str) -> None:
        self.slow = True
        log.info(
            "closing slow consumer",
            session=self.session.session_id,
            path=self.session.request.path,
            max_buffered=self.max_buffered,
            detail=detail,
        )
        self.session.close(
            self.close_code, f"slow consumer: more than {self.max_buffered} bytes unread"
        )

    # -- datagrams ------------------------------------------------------------------------------

    def send_datagram(self, data: bytes) -> bool:
        """Send one datagram; False when it was dropped (counted) or the session has ended."""
        if self.session.closed:
            return False
        try:
            sent = self.session.send_datagram(data)
        except SessionClosedError:
            return False
        except DatagramTooLarge:
            sent = False
        if sent:
            self.datagrams_sent += 1
        else:
            self.datagrams_dropped += 1
        return sent

    def send_datagram_message(self, message: Any) -> bool:
        """Send one msgpack object as one datagram (see `send_datagram`)."""
        return self.send_datagram(encode_message(message))
