"""One session's streams and datagrams over one WebSocket: the framing and its state, sans I/O.

WebSocket gives an ordered stream of messages; WebTransport's model needs many streams
and unreliable datagrams. Each binary WebSocket message carries exactly one frame
(docs/websocket.md is the specification):

    type (1 byte) | stream id (4 bytes, big-endian) | payload

- ``STREAM`` and ``STREAM_FIN``: bytes of a stream (``FIN``: and its end). The first
  frame on a new peer-initiated id opens that stream. Ids are numbered as QUIC's:
  bit 0 is the initiator (0 client, 1 server), bit 1 makes it unidirectional.
- ``RESET`` (4-byte code): the sender abandons its side of a stream.
- ``STOP`` (4-byte code): the sender will read no more of a stream.
- ``CREDIT`` (4-byte increment): the receiver of a stream allows that many more bytes.
  Every stream starts with `STREAM_WINDOW` bytes each way, so one stream cannot fill
  the socket with bytes its reader has not taken, and stream data leaves in chunks of
  at most `MAX_CHUNK`, round robin, so a large write never holds up a small one.
- ``DATAGRAM`` (id 0): one unreliable message, dropped by the sender when the socket's
  send buffer is over its bound.
- ``CLOSE`` (id: the 32-bit application code; payload: the reason, UTF-8): the
  session's close, one to one with WebTransport's close capsule.
- ``DRAIN`` (id 0): the sender will close soon (WebTransport's DRAIN_SESSION).

`MuxConnection` is the session's carrier (the role `WebTransportConnection` plays on
QUIC): `Session` and `Stream` call it to send, and it turns the peer's frames into the
same events (`aiowt.transport.events`) a WebTransport session reports. It writes frames
through the `write` callable it is given and never touches a socket.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import events
from ._streams import StreamBookkeeping
from .codes import CloseCode, StreamErrorCode
from .context import CloseInfo
from .errors import PeerError, UsageError
from .request import ConnectRequest
from .session import Session, Stream

__all__ = [
    "MAX_CHUNK",
    "MAX_DATAGRAM",
    "MAX_FRAME",
    "MAX_REASON",
    "STREAM_WINDOW",
    "FrameType",
    "MuxConnection",
    "MuxLimits",
    "decode_frame",
    "encode_frame",
]


class FrameType:
    """The frame types (the first byte of each WebSocket message)."""

    STREAM = 0x01
    STREAM_FIN = 0x02
    RESET = 0x03
    STOP = 0x04
    CREDIT = 0x05
    DATAGRAM = 0x06
    CLOSE = 0x07
    DRAIN = 0x08


_HEADER = struct.Struct(">BI")
_CODE = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
MAX_CHUNK = 16 * 1024
"""The most stream bytes one frame carries."""
MAX_DATAGRAM = 16 * 1024
"""The largest datagram payload."""
MAX_REASON = 1024
"""Bytes of a close reason (as WebTransport's close capsule allows)."""
MAX_FRAME = HEADER_SIZE + max(MAX_CHUNK, MAX_DATAGRAM, MAX_REASON)
"""The largest WebSocket message a peer may send."""
STREAM_WINDOW = 256 * 1024
"""Each stream's initial credit, each way."""
_KNOWN_TYPES = frozenset(range(FrameType.STREAM, FrameType.DRAIN + 1))


def encode_frame(kind: int, ident: int = 0, payload: bytes = b"") -> bytes:
    """One frame: the bytes of one binary WebSocket message."""
    return _HEADER.pack(kind, ident) + payload


def decode_frame(message: bytes) -> tuple[int, int, bytes]:
    """(type, id, payload) of one message; `PeerError` (PROTOCOL_ERROR) if it is not a frame."""
    if len(message) < HEADER_SIZE:
        raise PeerError(f"frame of {len(message)} bytes is shorter than its header")
    if len(message) > MAX_FRAME:
        raise PeerError(f"frame of {len(message)} bytes exceeds {MAX_FRAME}")
    kind, ident = _HEADER.unpack_from(message)
    if kind not in _KNOWN_TYPES:
        raise PeerError(f"unknown frame type 0x{kind:02x}")
    return kind, ident, message[HEADER_SIZE:]


@dataclass(frozen=True, slots=True)
class MuxLimits:
    """Bounds on one WebSocket session."""

    max_streams: int = 256
    """Streams the peer may have open at once, per kind; more are refused (REFUSED)."""
    send_buffer_bound: int = 256 * 1024
    """Past this many bytes unsent in the socket, datagrams are dropped (and counted)."""


@dataclass(slots=True)
class _Sending:
    """What waits to be sent on one stream, and how much the peer allows."""

    credit: int = STREAM_WINDOW
    chunks: collections.deque[bytes] = field(default_factory=collections.deque)
    queued: int = 0
    fin: bool = False


@dataclass(slots=True)
class _Receiving:
    """How much of a stream the peer may send, and how much it has."""

    limit: int = STREAM_WINDOW
    received: int = 0


class MuxConnection(StreamBookkeeping):
    """One WebSocket's session, streams and datagrams (sans I/O: frames out via `write`)."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        is_client: bool,
        limits: MuxLimits | None = None,
        session_options: dict[str, Any] | None = None,
    ) -> None:
        self._write = write
        self.is_client = is_client
        self.limits = limits or MuxLimits()
        self._session_options = session_options or {}
        self.session: Session | None = None
        self.is_closed = False
        self.buffered = 0
        """Bytes written to the socket and not yet sent (the glue keeps it current)."""
        self.on_session_end: Callable[[CloseInfo], None] = lambda info: None
        """Called once the session ended (the glue then closes the WebSocket)."""
        self._streams: dict[int, Stream] = {}
        self._sending: dict[int, _Sending] = {}
        self._receiving: dict[int, _Receiving] = {}
        self._ready: collections.deque[int] = collections.deque()
        self._drain_watch: set[Stream] = set()
        own = 0 if is_client else 1
        self._next_local = {False: own, True: own | 2}
        peer = own ^ 1
        self._peer_next = {False: peer, True: peer | 2}
        self._peer_open = {False: 0, True: 0}
        self.writing_paused = False

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        return f"<MuxConnection {side} streams={len(self._streams)}>"

    # --- the session ----------------------------------------------------------------------
    def start_session(self, request: ConnectRequest) -> Session:
        """The one session this WebSocket carries (after the handshake)."""
        if self.session is not None:
            raise UsageError("a WebSocket carries one session")
        self.session = Session(self, 0, request, **self._session_options)
        return self.session

    def close_session(self, session: Session, code: int, reason: str) -> None:
        """Send CLOSE, drop what is unsent, end the session (the glue closes the socket)."""
        encoded = reason.encode("utf-8", "replace")[:MAX_REASON].decode("utf-8", "ignore")
        if not self.is_closed:
            self._write(encode_frame(FrameType.CLOSE, code & 0xFFFFFFFF, encoded.encode()))
        self._finish(CloseInfo(code, encoded, False))

    def drain_session(self) -> None:
        """Tell the peer this side will close soon (DRAIN)."""
        if not self.is_closed and self.session is not None and not self.session.closed:
            self._write(encode_frame(FrameType.DRAIN))

    def connection_lost(self, reason: str) -> None:
        """The WebSocket ended: a session still open ends ABORTED."""
        self.connection_ended(CloseInfo(int(CloseCode.ABORTED), reason, True))

    def connection_ended(self, info: CloseInfo) -> None:
        """The WebSocket ended for a reason the glue knows: a session still open ends so."""
        self._finish(info)

    def _finish(self, info: CloseInfo) -> None:
        session = self.session
        if session is None or session.closed:
            self.is_closed = True
            return
        self.is_closed = True
        for stream in list(self._streams.values()):
            stream._session_ended()
            self._forget_stream(stream)
        self._sending.clear()
        self._ready.clear()
        session._emit(events.SessionClosed(info))
        self.on_session_end(info)

    # --- the carrier API (called by Session and Stream) -----------------------------------
    def open_stream(self, session: Session, unidirectional: bool) -> Stream:
        stream_id = self._next_local[unidirectional]
        self._next_local[unidirectional] = stream_id + 4
        stream = Stream(session, stream_id, unidirectional=unidirectional, opened_locally=True)
        self._streams[stream_id] = stream
        session.streams[stream_id] = stream
        if not unidirectional:
            self._receiving[stream_id] = _Receiving()
        return stream

    def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        session = stream.session
        if data:
            session.bytes_out += len(data)
            if session.taps:
                session._emit(events.StreamDataSent(stream, data, end_stream))
        sending = self._sending.get(stream.stream_id)
        if sending is None:
            sending = self._sending[stream.stream_id] = _Sending()
        if data:
            sending.chunks.append(data)
            sending.queued += len(data)
        sending.fin = sending.fin or end_stream
        if stream.stream_id not in self._ready:
            self._ready.append(stream.stream_id)
        self.flush()
        if end_stream:
            self._maybe_forget(stream)
        elif data:
            session._check_send_buffer(stream)

    def reset_stream(self, stream: Stream, code: int) -> None:
        self._abandon_sending(stream.stream_id)
        self._write(_coded(FrameType.RESET, stream.stream_id, code))
        stream._wake_drain()
        self._maybe_forget(stream)

    def stop_stream(self, stream: Stream, code: int) -> None:
        self._receiving.pop(stream.stream_id, None)
        self._write(_coded(FrameType.STOP, stream.stream_id, code))
        self._maybe_forget(stream)

    def send_buffer_size(self, stream: Stream) -> int:
        sending = self._sending.get(stream.stream_id)
        return sending.queued if sending is not None else 0

    def max_datagram_payload(self, session_id: int) -> int:
        return MAX_DATAGRAM

    def send_datagram(self, session: Session, data: bytes) -> bool:
        if self.writing_paused or self.buffered > self.limits.send_buffer_bound:
            session.datagrams_dropped_out += 1
            return False
        session.bytes_out += len(data)
        if session.taps:
            session._emit(events.DatagramSent(data))
        self._write(encode_frame(FrameType.DATAGRAM, 0, data))
        return True

    def stream_delivered(self, stream_id: int) -> bool:
        return self.is_closed or stream_id not in self._sending

    async def wait_delivered(self, stream_ids: Iterable[int], timeout: float) -> bool:
        # TCP keeps order: a CLOSE written before the socket's close arrives before it.
        return True

    # --- sending stream data: round robin, within credit -------------------------------
    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.flush()

    def flush(self) -> None:
        """Send queued stream data, one chunk per stream in turn, while the socket takes it."""
        ready = self._ready
        while ready and not self.writing_paused and not self.is_closed:
            stream_id = ready.popleft()
            sending = self._sending.get(stream_id)
            if sending is None:
                continue
            size = min(MAX_CHUNK, sending.credit, sending.queued)
            chunk = _take(sending, size)
            sending.credit -= size
            last = sending.fin and not sending.queued
            if chunk or last:
                kind = FrameType.STREAM_FIN if last else FrameType.STREAM
                self._write(encode_frame(kind, stream_id, chunk))
            if last:
                del self._sending[stream_id]
            elif sending.queued and sending.credit:
                ready.append(stream_id)
        if self._drain_watch:
            self._check_drain()

    def _abandon_sending(self, stream_id: int) -> None:
        self._sending.pop(stream_id, None)

    # --- receiving ------------------------------------------------------------------------
    def receive_frame(self, message: bytes) -> None:
        """One binary WebSocket message from the peer.

        A frame that breaks the rules closes the session with PROTOCOL_ERROR (and the
        glue then the socket); nothing the peer sends can raise out of here.
        """
        session = self.session
        if session is None or session.closed:
            return
        try:
            kind, ident, payload = decode_frame(message)
            if kind == FrameType.DATAGRAM:
                if len(payload) > MAX_DATAGRAM:
                    raise PeerError(f"datagram of {len(payload)} bytes exceeds {MAX_DATAGRAM}")
                session._emit(events.DatagramReceived(payload))
            elif kind in (FrameType.STREAM, FrameType.STREAM_FIN):
                self._stream_frame(session, ident, payload, kind == FrameType.STREAM_FIN)
            elif kind == FrameType.CREDIT:
                self._credit(ident, _code(payload))
            elif kind == FrameType.RESET:
                self._peer_reset(ident, _code(payload))
            elif kind == FrameType.STOP:
                self._peer_stop(ident, _code(payload))
            elif kind == FrameType.CLOSE:
                reason = payload[:MAX_REASON].decode("utf-8", "replace")
                self._finish(CloseInfo(ident, reason, True))
            elif kind == FrameType.DRAIN:
                session._emit(events.SessionDraining())
        except PeerError as exc:
            self.close_session(session, int(CloseCode.PROTOCOL_ERROR), str(exc))

    def _stream_frame(self, session: Session, stream_id: int, data: bytes, fin: bool) -> None:
        if len(data) > MAX_CHUNK:
            raise PeerError(f"stream frame of {len(data)} bytes exceeds {MAX_CHUNK}")
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._peer_opened(session, stream_id)
            if stream is None:
                return
        receiving = self._receiving.get(stream_id)
        if receiving is None:
            if stream.opened_locally and stream.unidirectional:
                raise PeerError(f"data on stream {stream_id}, which only this side sends on")
            return  # stopped by us: late bytes are dropped
        receiving.received += len(data)
        if receiving.received > receiving.limit:
            raise PeerError(f"stream {stream_id} sent past its credit of {receiving.limit}")
        if fin:
            stream.peer_ended = True
            self._receiving.pop(stream_id, None)
        self._deliver(stream, data, fin)
        if not fin and receiving.limit - receiving.received < STREAM_WINDOW // 2:
            # The bytes are with the session now (its inbox is bounded on its own).
            increment = receiving.received + STREAM_WINDOW - receiving.limit
            receiving.limit += increment
            self._write(_coded(FrameType.CREDIT, stream_id, increment))

    def _peer_opened(self, session: Session, stream_id: int) -> Stream | None:
        """A frame on a stream this side does not have: a new one, or a late frame."""
        unidirectional = bool(stream_id & 2)
        if (stream_id & 1) == (0 if self.is_client else 1):
            return None  # ours, already forgotten: late bytes
        if stream_id < self._peer_next[unidirectional]:
            return None  # the peer's, already forgotten or refused
        self._peer_next[unidirectional] = stream_id + 4
        stream = Stream(session, stream_id, unidirectional=unidirectional, opened_locally=False)
        if self._peer_open[unidirectional] >= self.limits.max_streams:
            self._refuse(stream_id, unidirectional)
            return None
        self._streams[stream_id] = stream
        self._receiving[stream_id] = _Receiving()
        self._peer_open[unidirectional] += 1
        if not session._emit(events.StreamOpened(stream)):
            stream._send_open = False
            stream.recv_open = False
            self._receiving.pop(stream_id, None)
            self._refuse(stream_id, unidirectional)
            self._forget_stream(stream)
            return None
        return stream

    def _refuse(self, stream_id: int, unidirectional: bool) -> None:
        self._write(_coded(FrameType.STOP, stream_id, StreamErrorCode.REFUSED))
        if not unidirectional:
            self._write(_coded(FrameType.RESET, stream_id, StreamErrorCode.REFUSED))

    def _credit(self, stream_id: int, increment: int) -> None:
        sending = self._sending.get(stream_id)
        if sending is None:
            return
        sending.credit += increment
        if sending.queued and stream_id not in self._ready:
            self._ready.append(stream_id)
        self.flush()

    def _peer_reset(self, stream_id: int, code: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._receiving.pop(stream_id, None)
        stream.peer_ended = True
        if stream.recv_open:
            stream.recv_open = False
            stream.session._emit(events.StreamReset(stream, code))
        self._maybe_forget(stream)

    def _peer_stop(self, stream_id: int, code: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream._send_open or stream_id in self._sending:
            # As QUIC does: STOP_SENDING is answered with a reset of the send side.
            self._abandon_sending(stream_id)
            self._write(_coded(FrameType.RESET, stream_id, code))
        stream._send_closed()
        self._maybe_forget(stream)

    # --- stream bookkeeping ---------------------------------------------------------------
    def _forget_stream(self, stream: Stream) -> None:
        stream_id = stream.stream_id
        if self._streams.pop(stream_id, None) is None:
            return
        self._receiving.pop(stream_id, None)
        self._drain_watch.discard(stream)
        if not stream.opened_locally:
            self._peer_open[stream.unidirectional] -= 1
        stream.session._emit(events.StreamClosed(stream))


def _coded(kind: int, stream_id: int, code: int) -> bytes:
    return encode_frame(kind, stream_id, _CODE.pack(code & 0xFFFFFFFF))


def _code(payload: bytes) -> int:
    if len(payload) != _CODE.size:
        raise PeerError(f"expected a 4-byte code, got {len(payload)} bytes")
    return int(_CODE.unpack(payload)[0])


def _take(sending: _Sending, size: int) -> bytes:
    """The first `size` queued bytes of a stream (joining or splitting its chunks)."""
    chunks = sending.chunks
    if not size:
        return b""
    sending.queued -= size
    first = chunks[0]
    if len(first) == size:
        return chunks.popleft()
    if len(first) > size:
        chunks[0] = first[size:]
        return first[:size]
    parts: list[bytes] = []
    while size:
        head = chunks.popleft()
        if len(head) > size:
            chunks.appendleft(head[size:])
            head = head[:size]
        parts.append(head)
        size -= len(head)
    return b"".join(parts)
