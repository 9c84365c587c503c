"""The asyncio QUIC protocol that speaks HTTP/3 WebTransport, for servers and clients.

aioquic's HTTP/3 layer does the handshake and the stream headers; this module fills in
what it leaves out (measured in ../shared/aioquic-notes.md): data on bidirectional
streams this side opened is taken from QUIC before the HTTP/3 parser can mangle it,
stream resets and STOP_SENDING are mapped to WebTransport codes, capsules on the
CONNECT stream are parsed here, HTTP/3 stream state is cleaned up when both directions
end, datagram sizes are checked before queueing, and sends are flushed once per loop
iteration so that bursts share packets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.connection import ProtocolError as H3ProtocolError
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.connection import QuicConnection, stream_is_unidirectional
from aioquic.quic.events import (
    ConnectionTerminated,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from . import events
from .capsule import MAX_CAPSULE_SIZE, CapsuleDecoder, CloseSession, DrainSession, encode_close
from .codes import CloseCode
from .context import CloseInfo
from .errors import HandshakeError, PeerError, SessionClosedError, UsageError
from .limits import ConnectionLimits
from .request import ConnectRequest
from .session import Session, Stream

_STREAM_GONE = (RuntimeError, ValueError, H3ProtocolError)
"""What aioquic raises for a send, reset or stop on a stream already ended or unknown."""

log = structlog.get_logger("aiowt.transport")

_DEFAULT_LIMITS = ConnectionLimits()

__all__ = ["IncomingSession", "WebTransportProtocol", "app_to_h3_code", "h3_to_app_code"]

# HTTP/3 error code space reserved for WebTransport application codes.
_WT_FIRST = 0x52E4A40FA8DB
_WT_LAST = 0x52E5AC983162
H3_REQUEST_REJECTED = 0x10B
H3_NO_ERROR = 0x100
WT_BUFFERED_STREAM_REJECTED = 0x3994BD84
WT_SESSION_GONE = 0x170D7B68

# Later drafts' settings, advertised beside aioquic's draft-02 ENABLE_WEBTRANSPORT so that
# more clients (Safari, draft-15 stacks) accept the server: WT_MAX_SESSIONS in its draft-07
# and draft-13 codepoints, and WT_ENABLED.
_WT_MAX_SESSIONS_SETTINGS = (0xC671706A, 0x14E9CD29)
_WT_ENABLED_SETTING = 0x2C7CF000
_PROTOCOL_TOKENS = frozenset({"webtransport", "webtransport-h3"})
# A short-header packet spends 1 byte of flags, the peer's connection id, a 2-byte packet
# number (aioquic's fixed size) and a 16-byte AEAD tag; a DATAGRAM frame adds its type and
# a 2-byte length. Measured: 1169 payload bytes fit a 1200-byte packet with 8-byte ids.
_PACKET_FIXED_OVERHEAD = 1 + 2 + 16 + 1 + 2


def app_to_h3_code(code: int) -> int:
    """Map a 32-bit WebTransport application error code into the HTTP/3 space."""
    code &= 0xFFFFFFFF
    return _WT_FIRST + code + code // 0x1E


def h3_to_app_code(h3_code: int) -> int:
    """The inverse of `app_to_h3_code`; codes outside the WebTransport range map to 0."""
    if not _WT_FIRST <= h3_code <= _WT_LAST or (h3_code - 0x21) % 0x1F == 0:
        return 0
    shifted = h3_code - _WT_FIRST
    return shifted - shifted // 0x1F


class _H3(H3Connection):
    """aioquic's HTTP/3 connection with the extra WebTransport settings advertised."""

    def __init__(self, quic: QuicConnection, max_sessions: int) -> None:
        self._max_sessions = max_sessions  # read by the settings sent from super().__init__
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings.update(dict.fromkeys(_WT_MAX_SESSIONS_SETTINGS, self._max_sessions))
        settings[_WT_ENABLED_SETTING] = 1
        return settings


class IncomingSession:
    """A CONNECT request waiting for its verdict: `accept()` or `reject()`, exactly once."""

    def __init__(self, protocol: WebTransportProtocol, stream_id: int, request: ConnectRequest):
        self._protocol = protocol
        self.stream_id = stream_id
        self.request = request
        self.decided = False
        self.gone = False
        """The client left (its connection closed or its CONNECT stream was reset) before
        the verdict: `accept()` then raises `SessionClosedError`, `reject()` does nothing."""
        self._early_data = b""
        self._early_end = False

    def __repr__(self) -> str:
        return f"<IncomingSession {self.stream_id} {self.request.path}>"

    @property
    def connection_alive(self) -> bool:
        return not self._protocol.is_closed

    def accept(self, headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ()) -> Session:
        """Answer 200 and return the live session."""
        self._decide()
        return self._protocol.accept(self, headers)

    def reject(
        self, status: int, reason: str = "", headers: tuple[tuple[str, str], ...] | list[Any] = ()
    ) -> None:
        """Answer `status` (4xx/5xx) with `reason` in the `aiowt-reason` header."""
        self._decide()
        if not self.gone:
            self._protocol.reject(self.stream_id, status, reason, headers)

    def _decide(self) -> None:
        if self.decided:
            raise UsageError("this CONNECT request already has a verdict")
        self.decided = True


OnRequest = Callable[[IncomingSession], None]


class WebTransportProtocol(QuicConnectionProtocol):
    """One QUIC connection carrying HTTP/3 and any number of WebTransport sessions."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        on_request: OnRequest | None = None,
        on_terminated: Callable[[WebTransportProtocol], None] | None = None,
        session_options: dict[str, Any] | None = None,
        limits: ConnectionLimits = _DEFAULT_LIMITS,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.limits = limits
        self._h3: H3Connection | None = None
        self._on_request = on_request
        self._on_terminated = on_terminated
        self._session_options = session_options or {}
        self.sessions: dict[int, Session] = {}
        self._pending: dict[int, IncomingSession] = {}
        self._capsules: dict[int, CapsuleDecoder] = {}
        self._streams: dict[int, Stream] = {}
        self._local_bidi: set[int] = set()
        self._discarded: set[int] = set()
        """Streams forgotten while the peer may still send on them (a session closed, a
        stream refused): their late data and resets are dropped here. Handed to the
        HTTP/3 layer, whose state for them is gone, the data would be parsed as HTTP/3
        frames and the whole connection closed with H3_FRAME_UNEXPECTED."""
        self._drain_watch: set[Stream] = set()
        self._delivery_waiters: list[tuple[tuple[int, ...], asyncio.Future[None]]] = []
        self._settings_waiter: asyncio.Future[None] | None = None
        self._response_waiters: dict[int, asyncio.Future[list[tuple[bytes, bytes]]]] = {}
        self.is_closed = False
        self.accepting = True
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self._quic.configuration.is_client or self.is_closed:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self._loop.call_later(self.limits.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if not self.sessions and not self._pending and not self.is_closed:
            self.close(error_code=H3_NO_ERROR, reason_phrase="no WebTransport session")

    # --- plumbing ---------------------------------------------------------------------------
    @property
    def h3(self) -> H3Connection:
        if self._h3 is None:
            raise UsageError("HTTP/3 is not negotiated yet")
        return self._h3

    def _flush(self) -> None:
        # One transmit per loop iteration lets a burst of sends share packets.
        self._transmit_soon()

    def transmit(self) -> None:
        # aioquic transmits after every datagram received: acknowledgements land here.
        super().transmit()
        if self._drain_watch:
            self._check_drain()
        if self._delivery_waiters:
            self._check_delivered()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self._h3 = _H3(self._quic, self.limits.max_sessions_per_connection)
            return
        if isinstance(event, ConnectionTerminated):
            self._connection_lost(event)
            return
        if self._h3 is None:
            return
        if isinstance(event, StreamDataReceived | StreamReset) and (
            event.stream_id in self._discarded
        ):
            if isinstance(event, StreamReset) or event.end_stream:
                self._discarded.discard(event.stream_id)
            return
        if isinstance(event, StreamDataReceived) and event.stream_id in self._local_bidi:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._deliver(stream, event.data, event.end_stream)
            return
        if isinstance(event, StreamReset | StopSendingReceived) and self._handle_stream_abort(
            event
        ):
            return
        if isinstance(event, StreamReset):
            # aioquic's HTTP/3 layer drops resets: the one of a CONNECT stream ends its session.
            self._connect_stream_reset(event)
        for h3_event in self._h3.handle_event(event):
            self._h3_event_received(h3_event)
        self._check_settings()

    def _check_settings(self) -> None:
        waiter = self._settings_waiter
        if waiter is not None and not waiter.done() and self.h3.received_settings is not None:
            waiter.set_result(None)

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, WebTransportStreamDataReceived):
            self._wt_stream_data(event)
        elif isinstance(event, DatagramReceived):
            session = self.sessions.get(event.stream_id)
            if session is not None:
                session._emit(events.DatagramReceived(event.data))
        elif isinstance(event, HeadersReceived):
            if self._quic.configuration.is_client:
                waiter = self._response_waiters.pop(event.stream_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(list(event.headers))
            else:
                self._request_received(event)
        elif isinstance(event, DataReceived):
            self._connect_stream_data(event.stream_id, event.data, event.stream_ended)

    # --- handshake (server side) --------------------------------------------------------------
    def _request_received(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        if stream_id in self.sessions or stream_id in self._pending:
            return  # trailers on a CONNECT stream: nothing to do
        if sum(len(k) + len(v) for k, v in event.headers) > self.limits.max_header_bytes:
            log.info("refused: request header block too large", status=431, stream_id=stream_id)
            self.reject(stream_id, 431, "request header block too large")
            return
        try:
            request = self._parse_request(event.headers)
        except _BadRequest as exc:
            log.info(
                "refused: bad request", status=exc.status, reason=exc.reason, stream_id=stream_id
            )
            self.reject(stream_id, exc.status, exc.reason)
            return
        if event.stream_ended:
            # A WebTransport session lives as long as its CONNECT stream: one that ends
            # with its headers asks for a session that is over before it starts.
            log.info("refused: CONNECT stream ended with its headers", status=400)
            self.reject(stream_id, 400, "CONNECT stream ended with its headers")
            return
        if not self.accepting or self._on_request is None:
            self.reject(stream_id, 503, "server is shutting down", (("retry-after", "1"),))
            return
        if len(self.sessions) + len(self._pending) >= self.limits.max_sessions_per_connection:
            self.reject(stream_id, 429, "too many sessions on this connection")
            return
        incoming = IncomingSession(self, stream_id, request)
        self._pending[stream_id] = incoming
        self._on_request(incoming)

    def _parse_request(self, raw: list[tuple[bytes, bytes]]) -> ConnectRequest:
        pseudo: dict[str, str] = {}
        headers: list[tuple[str, str]] = []
        try:
            for key_b, value_b in raw:
                key = key_b.decode("ascii").lower()
                value = value_b.decode("utf-8")
                if key.startswith(":"):
                    if key in pseudo:
                        raise _BadRequest(400, f"repeated pseudo-header {key}")
                    pseudo[key] = value
                else:
                    headers.append((key, value))
        except UnicodeDecodeError as exc:
            raise _BadRequest(400, "header is not valid UTF-8") from exc
        method = pseudo.get(":method", "")
        if method != "CONNECT":
            raise _BadRequest(405, f"only extended CONNECT is served here, not {method or '?'}")
        protocol = pseudo.get(":protocol")
        if protocol is None:
            raise _BadRequest(400, "CONNECT without :protocol")
        if protocol not in _PROTOCOL_TOKENS:
            raise _BadRequest(400, f"unsupported :protocol {protocol!r}")
        full_path = pseudo.get(":path", "")
        if not full_path.startswith("/"):
            raise _BadRequest(400, "missing or invalid :path")
        if ":authority" not in pseudo:
            raise _BadRequest(400, "missing :authority")
        path, _, query = full_path.partition("?")
        peer = self._quic._network_paths[0].addr if self._quic._network_paths else ("", 0)
        return ConnectRequest(
            method=method,
            scheme=pseudo.get(":scheme", "https"),
            authority=pseudo[":authority"],
            path=path,
            query_string=query,
            protocol=protocol,
            headers=tuple(headers),
            remote_addr=(str(peer[0]), int(peer[1])),
        )

    def accept(self, incoming: IncomingSession, headers: Any) -> Session:
        stream_id = incoming.stream_id
        if self._pending.pop(stream_id, None) is None or self.is_closed:
            raise SessionClosedError(int(CloseCode.ABORTED), "connection closed before accept")
        response = [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")]
        response += [(k.lower().encode(), v.encode()) for k, v in headers]
        self.h3.send_headers(stream_id, response)
        session = Session(self, stream_id, incoming.request, **self._session_options)
        self.sessions[stream_id] = session
        self._capsules[stream_id] = CapsuleDecoder()
        self._flush()
        if incoming._early_data or incoming._early_end:
            self._connect_stream_data(stream_id, incoming._early_data, incoming._early_end)
        return session

    def reject(self, stream_id: int, status: int, reason: str, headers: Any = ()) -> None:
        self._pending.pop(stream_id, None)
        if self.is_closed:
            return
        response = [(b":status", str(status).encode())]
        if reason:
            response.append((b"aiowt-reason", _header_safe(reason).encode()))
        response += [(k.lower().encode(), v.encode()) for k, v in headers]
        # The stream may already be gone (the peer reset it): a verdict to nobody is fine.
        with contextlib.suppress(*_STREAM_GONE):
            self.h3.send_headers(stream_id, response, end_stream=True)
        self._flush()

    # --- handshake (client side) --------------------------------------------------------------
    async def open_session(
        self, authority: str, path: str, headers: list[tuple[str, str]], protocol: str
    ) -> Session:
        """Send an extended CONNECT once the server's SETTINGS are in; return the session."""
        loop = asyncio.get_running_loop()
        if self.h3.received_settings is None:
            self._settings_waiter = loop.create_future()
            await self._settings_waiter
        settings = self.h3.received_settings or {}
        if not settings.get(0x8):  # ENABLE_CONNECT_PROTOCOL
            raise HandshakeError(0, "server does not support extended CONNECT")
        stream_id = self._quic.get_next_available_stream_id()
        waiter: asyncio.Future[list[tuple[bytes, bytes]]] = loop.create_future()
        self._response_waiters[stream_id] = waiter
        request = [
            (b":method", b"CONNECT"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b":protocol", protocol.encode()),
            (b"sec-webtransport-http3-draft02", b"1"),
        ] + [(k.lower().encode(), v.encode("utf-8", "surrogateescape")) for k, v in headers]
        self.h3.send_headers(stream_id, request)
        self._flush()
        raw = await waiter
        decoded = [(k.decode(), v.decode("utf-8", "replace")) for k, v in raw]
        status_text = dict(decoded).get(":status", "0")
        status = int(status_text) if status_text.isdigit() else 0
        if not 200 <= status < 300:
            reason = dict(decoded).get("aiowt-reason", "")
            raise HandshakeError(status, reason, [h for h in decoded if not h[0].startswith(":")])
        path_only, _, query = path.partition("?")
        request_info = ConnectRequest(
            method="CONNECT",
            scheme="https",
            authority=authority,
            path=path_only,
            query_string=query,
            protocol=protocol,
            headers=tuple(h for h in decoded if not h[0].startswith(":")),
            remote_addr=("", 0),
        )
        session = Session(self, stream_id, request_info, **self._session_options)
        self.sessions[stream_id] = session
        self._capsules[stream_id] = CapsuleDecoder()
        return session

    # --- the CONNECT stream: capsules and its end ------------------------------------------
    def _connect_stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        pending = self._pending.get(stream_id)
        if pending is not None:
            # Capsules sent before the verdict wait for it, within one capsule's size.
            pending._early_data += data
            pending._early_end = ended
            if len(pending._early_data) > MAX_CAPSULE_SIZE:
                log.info("refused: too much data before the verdict", status=400)
                pending.gone = True
                self.reject(stream_id, 400, "too much data before the verdict")
            return
        session = self.sessions.get(stream_id)
        if session is None:
            return
        try:
            for capsule in self._capsules[stream_id].feed(data):
                if isinstance(capsule, CloseSession):
                    self._finish_session(session, CloseInfo(capsule.code, capsule.reason, True))
                    return
                if isinstance(capsule, DrainSession):
                    session._emit(events.SessionDraining())
        except PeerError as exc:
            self.close_session(session, exc.code, str(exc))
            return
        if ended:
            self._finish_session(session, CloseInfo(0, "", True))

    def _connect_stream_reset(self, event: StreamReset) -> None:
        stream_id = event.stream_id
        pending = self._pending.pop(stream_id, None)
        if pending is not None:
            pending.gone = True
        session = self.sessions.get(stream_id)
        if session is not None:
            reason = f"CONNECT stream reset (0x{event.error_code:x})"
            self._finish_session(session, CloseInfo(int(CloseCode.ABORTED), reason, True))

    def close_session(self, session: Session, code: int, reason: str) -> None:
        """Send the close capsule with FIN, reset the session's streams, end the session."""
        if session.session_id in self.sessions and not self.is_closed:
            with contextlib.suppress(*_STREAM_GONE):
                self.h3.send_data(session.session_id, encode_close(code, reason), end_stream=True)
            self._flush()
        self._finish_session(session, CloseInfo(code, reason, False))

    def _finish_session(self, session: Session, info: CloseInfo) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        self._capsules.pop(session.session_id, None)
        alive = not self.is_closed
        for stream in list(session.streams.values()):
            if alive:
                self._abort_stream_quietly(stream)
            # Wake readers and drainers before the stream leaves the session's table,
            # or one waiting in `read()` or `drain()` would never hear of the end.
            stream._session_ended()
            self._forget_stream(stream)
        if alive and info.by_peer:
            # Answer the peer's close with our FIN on the CONNECT stream, as the draft asks.
            with contextlib.suppress(*_STREAM_GONE):
                self.h3.send_data(session.session_id, b"", end_stream=True)
        session._emit(events.SessionClosed(info))
        self._flush()
        if not self.sessions:
            self._arm_idle_timer()

    def _abort_stream_quietly(self, stream: Stream) -> None:
        sid = stream.stream_id
        with contextlib.suppress(*_STREAM_GONE):
            if self._quic._stream_can_send(sid) and stream._send_open:
                self._quic.reset_stream(sid, WT_SESSION_GONE)
            if stream.recv_open and self._quic._stream_can_receive(sid):
                self._quic.stop_stream(sid, WT_SESSION_GONE)

    # --- streams ----------------------------------------------------------------------------
    def open_stream(self, session: Session, unidirectional: bool) -> Stream:
        stream_id = self.h3.create_webtransport_stream(session.session_id, unidirectional)
        stream = Stream(session, stream_id, unidirectional=unidirectional, opened_locally=True)
        self._streams[stream_id] = stream
        session.streams[stream_id] = stream
        if not unidirectional:
            self._local_bidi.add(stream_id)
        self._flush()
        return stream

    def _wt_stream_data(self, event: WebTransportStreamDataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            session = self.sessions.get(event.session_id)
            if session is None:
                self._refuse(event.stream_id, WT_BUFFERED_STREAM_REJECTED)
                return
            stream = Stream(
                session,
                event.stream_id,
                unidirectional=stream_is_unidirectional(event.stream_id),
                opened_locally=False,
            )
            self._streams[event.stream_id] = stream
            if not session._emit(events.StreamOpened(stream)):
                stream._send_open = False
                stream.recv_open = False
                self._refuse(event.stream_id, app_to_h3_code(0x2001))
                self._forget_stream(stream)
                return
        self._deliver(stream, event.data, event.stream_ended)

    def _deliver(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if not stream.recv_open:
            return
        if not stream.session._emit(events.StreamDataReceived(stream, data, end_stream)):
            stream.reset(0x2001)
            stream.stop(0x2001)
            self._maybe_forget(stream)
            return
        if end_stream:
            stream.recv_open = False
            self._maybe_forget(stream)

    def _refuse(self, stream_id: int, h3_code: int) -> None:
        with contextlib.suppress(*_STREAM_GONE):
            if self._quic._stream_can_receive(stream_id):
                self._quic.stop_stream(stream_id, h3_code)
            if not stream_is_unidirectional(stream_id) and self._quic._stream_can_send(stream_id):
                self._quic.reset_stream(stream_id, h3_code)
        self._flush()

    def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        session = stream.session
        if data:
            session.bytes_out += len(data)
            if session.taps:
                session._emit(events.StreamDataSent(stream, data, end_stream))
        self._quic.send_stream_data(stream.stream_id, data, end_stream)
        self._flush()
        if end_stream:
            self._maybe_forget(stream)
        elif data:
            session._check_send_buffer(stream)

    def reset_stream(self, stream: Stream, code: int) -> None:
        with contextlib.suppress(*_STREAM_GONE):
            self._quic.reset_stream(stream.stream_id, app_to_h3_code(code))
        self._flush()
        stream._wake_drain()
        self._maybe_forget(stream)

    def stop_stream(self, stream: Stream, code: int) -> None:
        with contextlib.suppress(*_STREAM_GONE):
            self._quic.stop_stream(stream.stream_id, app_to_h3_code(code))
        self._flush()
        self._maybe_forget(stream)

    def _handle_stream_abort(self, event: StreamReset | StopSendingReceived) -> bool:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return False
        code = h3_to_app_code(event.error_code)
        if isinstance(event, StreamReset):
            if stream.recv_open:
                stream.recv_open = False
                stream.session._emit(events.StreamReset(stream, code))
        else:
            # aioquic already reset our send side in answer to STOP_SENDING.
            stream._send_closed()
        self._maybe_forget(stream)
        return True

    def _maybe_forget(self, stream: Stream) -> None:
        if not stream.recv_open and not stream._send_open:
            self._forget_stream(stream)

    def _forget_stream(self, stream: Stream) -> None:
        sid = stream.stream_id
        if self._streams.pop(sid, None) is None:
            return
        self._local_bidi.discard(sid)
        self._drain_watch.discard(stream)
        if self._h3 is not None:
            # aioquic keeps HTTP/3 state for peer-opened streams until it sees both
            # directions end, and it never sees ours: drop it here or it leaks.
            self._h3._stream.pop(sid, None)
            if not (stream.unidirectional and stream.opened_locally):
                quic_stream = self._quic._streams.get(sid)
                if quic_stream is not None and not quic_stream.receiver.is_finished:
                    self._discarded.add(sid)
        stream.session._emit(events.StreamClosed(stream))

    def send_buffer_size(self, stream: Stream) -> int:
        quic_stream = self._quic._streams.get(stream.stream_id)
        if quic_stream is None:
            return 0
        return len(quic_stream.sender._buffer)

    def watch_drain(self, stream: Stream) -> None:
        self._drain_watch.add(stream)

    def _check_drain(self) -> None:
        for stream in list(self._drain_watch):
            if (
                self.send_buffer_size(stream) <= stream.session.send_buffer_low
                or not stream._send_open
            ):
                self._drain_watch.discard(stream)
                stream._wake_drain()

    # --- delivery ----------------------------------------------------------------------------
    def stream_delivered(self, stream_id: int) -> bool:
        """All we sent on `stream_id`, its end included, is acknowledged (or never can be)."""
        stream = self._quic._streams.get(stream_id)
        return self.is_closed or stream is None or stream.sender.is_finished

    async def wait_delivered(self, stream_ids: Iterable[int], timeout: float) -> bool:
        """Wait until the peer acknowledged all we sent on `stream_ids`, up to `timeout`.

        How a close capsule gets ahead of the CONNECTION_CLOSE that follows it: QUIC
        gives no ordering between the two, so the capsule must be acknowledged first.
        """
        ids = tuple(stream_ids)
        if all(self.stream_delivered(sid) for sid in ids):
            return True
        entry = (ids, self._loop.create_future())
        self._delivery_waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(entry[1]), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._delivery_waiters.remove(entry)

    def _check_delivered(self) -> None:
        for ids, waiter in self._delivery_waiters:
            if not waiter.done() and all(self.stream_delivered(sid) for sid in ids):
                waiter.set_result(None)

    # --- datagrams ----------------------------------------------------------------------------
    def max_datagram_payload(self, session_id: int) -> int:
        remote = self._quic._remote_max_datagram_frame_size or 0
        peer_cid = getattr(self._quic, "_peer_cid", None)
        cid_length = len(peer_cid.cid) if peer_cid is not None else 20
        packet = self._quic._max_datagram_size - _PACKET_FIXED_OVERHEAD - cid_length
        prefix = len(encode_uint_var(session_id // 4))
        return max(0, min(remote, packet) - prefix)

    def send_datagram(self, session: Session, data: bytes) -> bool:
        if len(self._quic._datagrams_pending) >= self.limits.max_pending_datagrams:
            session.datagrams_dropped_out += 1
            return False
        session.bytes_out += len(data)
        if session.taps:
            session._emit(events.DatagramSent(data))
        self.h3.send_datagram(session.session_id, data)
        self._flush()
        return True

    # --- connection end -----------------------------------------------------------------------
    def _connection_lost(self, event: ConnectionTerminated) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        reason = event.reason_phrase or f"connection closed (0x{event.error_code:x})"
        for session in list(self.sessions.values()):
            self._finish_session(session, CloseInfo(int(CloseCode.ABORTED), reason, True))
        for incoming in self._pending.values():
            incoming.gone = True
        self._pending.clear()
        self._check_delivered()
        for waiter in self._response_waiters.values():
            if not waiter.done():
                waiter.set_exception(HandshakeError(0, reason))
        if self._settings_waiter is not None and not self._settings_waiter.done():
            self._settings_waiter.set_exception(HandshakeError(0, reason))
        if self._on_terminated is not None:
            self._on_terminated(self)


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _header_safe(text: str) -> str:
    """Header values may not carry control characters; keep reasons readable and short."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    # HTTP/3 forbids leading or trailing whitespace in a field value (aioquic would
    # drop the peer's whole connection over it).
    return cleaned[:512].strip()
