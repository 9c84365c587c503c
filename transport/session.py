"""Transport-level sessions and streams, shared by server and client.

A `Session` is one WebTransport session on one QUIC connection. The protocol reports
what happens to it as events (`aiowt.transport.events`): taps see each one first, then
it goes to the session's sink (the actor layer attaches one, so every event becomes a
message for the session's handler actor) or, with no sink, into bounded queues read with
the pull API (`receive_datagram`, `accept_stream`, `Stream.read`), which is what the
Python client uses. Writes are synchronous and never block the loop; `drain()` waits
for a stream's send buffer to fall.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

from .codes import CloseCode
from .context import CloseInfo
from .errors import (
    DatagramTooLarge,
    SessionClosedError,
    StreamClosedError,
    UsageError,
    WriteBufferFull,
)
from .events import (
    DatagramReceived,
    EventSink,
    InboundEvent,
    SessionAccepted,
    SessionClosed,
    SessionDraining,
    SessionEvent,
    StreamClosed,
    StreamDataReceived,
    StreamOpened,
    StreamReset,
)
from .framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FrameDecoder,
    decode_message,
    encode_frame,
    encode_message,
)
from .request import ConnectRequest

__all__ = ["Carrier", "Session", "SessionTap", "Stream", "wait_close_delivered"]


class Carrier(Protocol):
    """What carries a session's bytes: a QUIC connection (`WebTransportConnection`) or a
    WebSocket (`mux.MuxConnection`). Sessions and streams send through it; it reports
    what the peer does as the session's events."""

    def open_stream(self, session: Session, unidirectional: bool) -> Stream: ...
    def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None: ...
    def reset_stream(self, stream: Stream, code: int) -> None: ...
    def stop_stream(self, stream: Stream, code: int) -> None: ...
    def send_buffer_size(self, stream: Stream) -> int: ...
    def watch_drain(self, stream: Stream) -> None: ...
    def max_datagram_payload(self, session_id: int) -> int: ...
    def send_datagram(self, session: Session, data: bytes) -> bool: ...
    def close_session(self, session: Session, code: int, reason: str) -> None: ...
    async def wait_delivered(self, stream_ids: Iterable[int], timeout: float) -> bool: ...


class SessionTap:
    """Sees every event of a session at the transport, before any handler does.

    Middleware attach taps (rate limits, idle timers, byte counters) through
    `SessionContext.taps`; the server hands them to the session when it accepts it, and
    `SessionAccepted` is the first event they see. Taps run on the loop, synchronously,
    in the order they were added, on the hot path: keep `observe` cheap.
    """

    __slots__ = ()

    def observe(self, session: Session, event: SessionEvent) -> bool:
        """See `event`; return False to veto it.

        A veto drops a `DatagramReceived`, refuses a `StreamOpened` and resets the stream
        of a `StreamDataReceived` (stream bytes cannot be dropped piecemeal); taps after
        the vetoing one do not see it. The result is ignored for every other event.
        """
        return True


_VETOABLE = (DatagramReceived, StreamOpened, StreamDataReceived)
_INBOUND = (
    DatagramReceived,
    StreamOpened,
    StreamDataReceived,
    StreamReset,
    SessionDraining,
    SessionClosed,
)


class Stream:
    """One WebTransport stream, bidirectional or unidirectional, opened by either side."""

    __slots__ = (
        "_chunks",
        "_decoder",
        "_drain_waiter",
        "_eof",
        "_messages",
        "_read_reset",
        "_send_open",
        "_waiter",
        "buffered",
        "opened_locally",
        "peer_ended",
        "recv_open",
        "session",
        "stream_id",
        "unidirectional",
    )

    def __init__(
        self, session: Session, stream_id: int, *, unidirectional: bool, opened_locally: bool
    ) -> None:
        self.session = session
        self.stream_id = stream_id
        self.unidirectional = unidirectional
        self.opened_locally = opened_locally
        self._send_open = opened_locally or not unidirectional
        self.recv_open = not (unidirectional and opened_locally)
        self.peer_ended = False
        """The peer ended its send side (FIN or reset): it sends nothing more."""
        self._chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._eof = False
        self._read_reset: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._decoder: FrameDecoder | None = None
        self._messages: collections.deque[Any] = collections.deque()

    def __repr__(self) -> str:
        kind = "uni" if self.unidirectional else "bidi"
        side = "local" if self.opened_locally else "peer"
        return f"<Stream {self.stream_id} {kind} {side}>"

    # --- sending ----------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return self._send_open and not self.session.closed

    def write(self, data: bytes, *, end_stream: bool = False) -> None:
        """Queue `data` for sending; raises if the send side is closed or over its bound."""
        self.session._check_open()
        if not self._send_open:
            raise StreamClosedError(self.stream_id, "send side is closed")
        if end_stream:
            self._send_open = False
        self.session._protocol.send_stream_data(self, data, end_stream)

    def send_message(self, message: Any, *, end_stream: bool = False) -> None:
        """Send one msgpack frame."""
        self.write(
            encode_frame(message, max_size=self.session.max_message_size), end_stream=end_stream
        )

    def finish(self) -> None:
        """Send FIN: the send side ends cleanly. Idempotent."""
        if self._send_open and not self.session.closed:
            self.write(b"", end_stream=True)

    def reset(self, code: int = 0) -> None:
        """Abort the send side with an application error code. Idempotent."""
        if self._send_open and not self.session.closed:
            self._send_open = False
            self.session._protocol.reset_stream(self, code)

    def stop(self, code: int = 0) -> None:
        """Ask the peer to stop sending (STOP_SENDING); local reads end. Idempotent."""
        if self.recv_open and not self.session.closed:
            self.recv_open = False
            self._eof = True
            self._wake()
            self.session._protocol.stop_stream(self, code)

    async def drain(self) -> None:
        """Wait until the send buffer is below the low-water mark."""
        protocol = self.session._protocol
        while protocol.send_buffer_size(self) > self.session.send_buffer_low:
            if self.session.closed:
                raise SessionClosedError()
            if self._drain_waiter is None or self._drain_waiter.done():
                self._drain_waiter = asyncio.get_running_loop().create_future()
            protocol.watch_drain(self)
            await self._drain_waiter

    # --- receiving (pull API, when no sink is attached) -------------------------------
    async def read(self, max_bytes: int = -1) -> bytes:
        """The next bytes received; `b""` at the end of the stream.

        Raises `StreamClosedError` if the peer reset the stream, and `SessionClosedError`
        if the session ended before the stream did: a cut-off stream never looks whole.
        """
        while not self._chunks:
            if self._read_reset is not None:
                raise StreamClosedError(self.stream_id, "reset by peer", code=self._read_reset)
            if self._eof:
                return b""
            info = self.session.close_info
            if info is not None:
                raise SessionClosedError(info.code, info.reason)
            await self._wait()
        chunk = self._chunks.popleft()
        if 0 <= max_bytes < len(chunk):
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        return chunk

    async def read_all(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """Everything until the end of the stream (at most `limit` bytes)."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if size > limit:
                raise UsageError(f"stream {self.stream_id} sent more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def receive_message(self) -> Any:
        """The next msgpack frame; `StreamClosedError` when the stream ends first."""
        if self._decoder is None:
            self._decoder = FrameDecoder(self.session.max_message_size)
        while not self._messages:
            chunk = await self.read()
            if not chunk:
                self._decoder.close()
                raise StreamClosedError(self.stream_id, "ended")
            self._messages.extend(self._decoder.feed(chunk))
        return self._messages.popleft()

    async def messages(self) -> AsyncIterator[Any]:
        """Iterate over msgpack frames until the stream ends."""
        while True:
            try:
                yield await self.receive_message()
            except StreamClosedError as exc:
                if exc.code:
                    raise
                return

    # --- called by the protocol ---------------------------------------------------------
    def _feed(self, data: bytes, end_stream: bool) -> None:
        if data:
            self._chunks.append(data)
            self.buffered += len(data)
        if end_stream:
            self._eof = True
            self.recv_open = False
        self._wake()

    def _feed_reset(self, code: int) -> None:
        self._read_reset = code
        self.recv_open = False
        self._wake()

    def _session_ended(self) -> None:
        self._send_open = False
        self.recv_open = False
        self._wake()
        self._wake_drain()

    def _send_closed(self) -> None:
        self._send_open = False
        self._wake_drain()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Session:
    """One WebTransport session: datagrams, streams, and its close.

    All methods must be called on the event loop that owns the connection.
    """

    max_queued_datagrams = 1024
    """Pull API bound: older datagrams are dropped (and counted) past it."""

    # Slots, and waiters made on first use: a server holds one of these per session.
    __slots__ = (
        "_closed_waiter",
        "_datagrams",
        "_incoming",
        "_max_datagram",
        "_protocol",
        "_release",
        "_sink",
        "_waiters",
        "bytes_in",
        "bytes_out",
        "close_info",
        "datagrams_dropped",
        "datagrams_dropped_out",
        "inbox_bytes",
        "max_inbox_bytes",
        "max_message_size",
        "request",
        "send_buffer_high",
        "send_buffer_low",
        "session_id",
        "streams",
        "taps",
    )

    def __init__(
        self,
        protocol: Carrier,
        session_id: int,
        request: ConnectRequest,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        send_buffer_high: int = 4 * 1024 * 1024,
        send_buffer_low: int = 256 * 1024,
        max_inbox_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._protocol = protocol
        self.session_id = session_id
        self.request = request
        self.max_message_size = max_message_size
        self.send_buffer_high = send_buffer_high
        self.send_buffer_low = send_buffer_low
        self.max_inbox_bytes = max_inbox_bytes
        """Past this many bytes in `inbox_bytes`, the peer is sending faster than it is
        served and the session closes RATE_LIMITED."""
        self.inbox_bytes = 0
        """Bytes received and handed to the sink (the handler actor's inbox), not yet
        handled: the actor layer counts them up and down, both on the loop."""
        self.streams: dict[int, Stream] = {}
        self.taps: tuple[SessionTap, ...] = ()
        self._sink: EventSink | None = None
        self.close_info: CloseInfo | None = None
        self.datagrams_dropped = 0
        """Inbound datagrams dropped because nobody read them (pull API only)."""
        self.datagrams_dropped_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._closed_waiter: asyncio.Future[CloseInfo] | None = None
        # The pull API's queues, made on first use: an empty deque costs 760 bytes, and a
        # session with a sink attached (every server session) never uses them.
        self._datagrams: collections.deque[bytes] | None = None
        self._incoming: collections.deque[Stream] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._release: Callable[[bool], Awaitable[None]] | None = None
        self._max_datagram: int | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Session {self.session_id} {self.request.path} {state}>"

    # --- state ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.close_info is not None

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram payload that fits one QUIC packet on this connection."""
        # Fixed once the handshake is done (packet size, connection-id length, session
        # id); computing it costs about a microsecond, paid on every send otherwise.
        if self._max_datagram is None:
            self._max_datagram = self._protocol.max_datagram_payload(self.session_id)
        return self._max_datagram

    async def wait_closed(self) -> CloseInfo:
        """Wait for the session to end, however it ends."""
        if self.close_info is not None:
            return self.close_info
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._closed_waiter)

    def attach(self, sink: EventSink) -> None:
        """Hand every later inbound event to `sink`, replaying anything already queued."""
        self._sink = sink
        incoming, self._incoming = self._incoming, None
        for stream in incoming or ():
            sink(StreamOpened(stream))
        for stream in list(self.streams.values()):
            if stream._chunks or stream._eof:
                data = b"".join(stream._chunks)
                stream._chunks.clear()
                stream.buffered = 0
                sink(StreamDataReceived(stream, data, stream._eof))
        datagrams, self._datagrams = self._datagrams, None
        for data in datagrams or ():
            sink(DatagramReceived(data))
        if self.close_info is not None:
            sink(SessionClosed(self.close_info))

    def install_taps(self, taps: Iterable[SessionTap]) -> None:
        """Show `taps` every event of this session from now on, `SessionAccepted` first.

        The server calls it once, when it accepts the session; a second call raises
        `UsageError` (a tap that missed the start of a session would count wrong).
        """
        if self.taps:
            raise UsageError("this session's taps are already installed")
        self.taps = tuple(taps)
        self._emit(SessionAccepted())

    # --- sending ----------------------------------------------------------------------------
    def send_datagram(self, data: bytes) -> bool:
        """Queue one datagram; `DatagramTooLarge` if it cannot fit a packet.

        Datagrams are unreliable by nature, so a peer that cannot keep up loses them:
        past `max_pending_datagrams` unsent on the connection, the datagram is dropped,
        counted in `datagrams_dropped_out`, and False is returned.
        """
        self._check_open()
        limit = self.max_datagram_size
        if len(data) > limit:
            raise DatagramTooLarge(len(data), limit)
        return self._protocol.send_datagram(self, data)

    def send_datagram_message(self, message: Any) -> bool:
        """Send one msgpack object as one datagram (see `send_datagram`)."""
        return self.send_datagram(encode_message(message))

    def open_stream(self, *, unidirectional: bool = False) -> Stream:
        """Open a stream to the peer; it can be written to at once."""
        self._check_open()
        return self._protocol.open_stream(self, unidirectional)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the session with an application code and reason (sends the close capsule)."""
        if self.closed:
            return
        self._protocol.close_session(self, int(code), reason)

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the session and, for a client, its QUIC connection once the capsule is out."""
        self.close(code, reason)
        if self._release is not None:
            release, self._release = self._release, None
            await release(False)

    async def abort(self) -> None:
        """Client only: drop the connection without a close capsule (an abrupt disconnect)."""
        if self._release is None:
            raise UsageError("abort() is for client sessions")
        release, self._release = self._release, None
        await release(True)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- receiving (pull API) ---------------------------------------------------------------
    async def receive_datagram(self) -> bytes:
        """The next datagram; `SessionClosedError` once the session has ended."""
        while not (datagrams := self._datagrams):
            self._raise_if_closed()
            await self._wait()
        return datagrams.popleft()

    async def receive_datagram_message(self) -> Any:
        return decode_message(await self.receive_datagram(), max_size=self.max_message_size)

    async def accept_stream(self) -> Stream:
        """The next stream the peer opened."""
        while not (incoming := self._incoming):
            self._raise_if_closed()
            await self._wait()
        return incoming.popleft()

    # --- called by the protocol ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self.close_info is not None:
            raise SessionClosedError(self.close_info.code, self.close_info.reason)

    def _raise_if_closed(self) -> None:
        if self.close_info is not None:
            raise SessionClosedError(self.close_info.code, self.close_info.reason)

    def _emit(self, event: SessionEvent) -> bool:
        """The protocol reports `event`: the taps see it, then the sink or the pull API.

        Returns False when a tap vetoed it (see `SessionTap.observe`); the protocol then
        drops the datagram, or refuses or resets the stream.
        """
        if isinstance(event, DatagramReceived | StreamDataReceived):
            self.bytes_in += len(event.data)
        elif isinstance(event, SessionClosed):
            if self.close_info is not None:
                return True
            self._closed(event.info)
        elif isinstance(event, StreamReset):
            event.stream._feed_reset(event.code)
        elif (
            isinstance(event, StreamClosed)
            and self.streams.pop(event.stream.stream_id, None) is None
        ):
            return True
        for tap in self.taps:
            if not tap.observe(self, event) and isinstance(event, _VETOABLE):
                return False
        if not isinstance(event, _INBOUND):
            return True
        if isinstance(event, StreamOpened):
            self.streams[event.stream.stream_id] = event.stream
        sink = self._sink
        if sink is None:
            self._queue(event)
            return True
        if isinstance(event, StreamDataReceived) and event.end_stream:
            event.stream.recv_open = False
        sink(event)
        return True

    def _queue(self, event: InboundEvent) -> None:
        """With no sink: keep the event for the pull API and wake its readers."""
        if isinstance(event, DatagramReceived):
            datagrams = self._datagrams
            if datagrams is None:
                datagrams = self._datagrams = collections.deque()
            elif len(datagrams) >= self.max_queued_datagrams:
                datagrams.popleft()
                self.datagrams_dropped += 1
            datagrams.append(event.data)
        elif isinstance(event, StreamOpened):
            if self._incoming is None:
                self._incoming = collections.deque()
            self._incoming.append(event.stream)
        elif isinstance(event, StreamDataReceived):
            event.stream._feed(event.data, event.end_stream)
            return
        elif not isinstance(event, SessionClosed):
            return  # a reset already woke the stream's reader; draining is for handlers
        self._wake()

    def _closed(self, info: CloseInfo) -> None:
        self.close_info = info
        for stream in self.streams.values():
            stream._send_open = False
            stream.recv_open = False
            stream._wake()
            stream._wake_drain()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(info)
        self._wake()

    def _wake(self) -> None:
        # Datagram readers and stream acceptors wait side by side: wake them all.
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter

    def _check_send_buffer(self, stream: Stream) -> None:
        if self._protocol.send_buffer_size(stream) > self.send_buffer_high:
            raise WriteBufferFull(
                f"stream {stream.stream_id}: peer is not reading; send buffer above "
                f"{self.send_buffer_high} bytes"
            )


async def wait_close_delivered(sessions: Iterable[Session], timeout: float) -> None:
    """Wait until the peers acknowledged the close capsules of `sessions`, up to `timeout`.

    QUIC does not order a session's close capsule before the CONNECTION_CLOSE that may
    follow it, so whoever closes connections after sessions waits for this first.
    """
    by_connection: dict[Carrier, list[int]] = {}
    for session in sessions:
        by_connection.setdefault(session._protocol, []).append(session.session_id)
    await asyncio.gather(
        *(protocol.wait_delivered(ids, timeout) for protocol, ids in by_connection.items())
    )
