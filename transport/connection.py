"""`WebTransportConnection`: WebTransport over one QUIC connection, sans I/O.

Datagrams and `now` go in (`receive_datagram`, `handle_timer`); datagrams to send, a
timer and past-tense events come out (`datagrams_to_send`, `get_timer`, `next_event`
for the connection; each session's own events go to its `Session`, see
`events.py`). It owns what WebTransport adds to HTTP/3: CONNECT validation and the
verdict, capsules on the CONNECT stream, stream bookkeeping, datagram bounds, the idle
close. The QUIC and HTTP/3 work is the engine's (`engine.py`); the socket and the
timer are the asyncio glue's (`_protocol.py`). It never reads a clock: time is what
its callers say.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from . import engine as e
from . import events
from ._streams import StreamBookkeeping
from .capsule import MAX_CAPSULE_SIZE, CapsuleDecoder, CloseSession, DrainSession, encode_close
from .codes import CloseCode
from .context import CloseInfo
from .errors import HandshakeError, PeerError, SessionClosedError, UsageError
from .limits import ConnectionLimits
from .request import ConnectRequest
from .session import Session, Stream

log = structlog.get_logger("aiowt.transport")

__all__ = [
    "ConnectionEvent",
    "HandshakeCompleted",
    "IncomingSession",
    "OnRequest",
    "PeerSettingsReceived",
    "SessionRequested",
    "SessionResponse",
    "Terminated",
    "WebTransportConnection",
    "app_to_h3_code",
    "h3_to_app_code",
]

_DEFAULT_LIMITS = ConnectionLimits()

# HTTP/3 error code space reserved for WebTransport application codes.
_WT_FIRST = 0x52E4A40FA8DB
_WT_LAST = 0x52E5AC983162
H3_NO_ERROR = 0x100
WT_BUFFERED_STREAM_REJECTED = 0x3994BD84
WT_SESSION_GONE = 0x170D7B68
_PROTOCOL_TOKENS = frozenset({"webtransport", "webtransport-h3"})


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


# --- what the connection reports --------------------------------------------------------
class ConnectionEvent:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(ConnectionEvent):
    """QUIC, TLS and HTTP/3 are up."""


@dataclass(frozen=True, slots=True)
class PeerSettingsReceived(ConnectionEvent):
    """The peer's HTTP/3 SETTINGS arrived: a client may send CONNECT now."""


@dataclass(frozen=True, slots=True)
class SessionRequested(ConnectionEvent):
    """Server: a valid CONNECT awaits its verdict."""

    incoming: IncomingSession


@dataclass(frozen=True, slots=True)
class SessionResponse(ConnectionEvent):
    """Client: the answer to the CONNECT on `stream_id`, a session or the refusal."""

    stream_id: int
    result: Session | HandshakeError


@dataclass(frozen=True, slots=True)
class Terminated(ConnectionEvent):
    reason: str
    error_code: int = 0
    """The QUIC error code; 0x100-0x1ff is a TLS alert (0x100 + the alert)."""


@dataclass(frozen=True, slots=True)
class ConnectionIdChanged(ConnectionEvent):
    """A listener routes `cid` to this connection (`issued`) or stops doing so."""

    cid: bytes
    issued: bool


class IncomingSession:
    """A CONNECT request waiting for its verdict: `accept()` or `reject()`, exactly once."""

    def __init__(self, connection: WebTransportConnection, stream_id: int, request: ConnectRequest):
        self._connection = connection
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
        return not self._connection.is_closed

    def accept(self, headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ()) -> Session:
        """Answer 200 and return the live session."""
        self._decide()
        return self._connection.accept(self, headers)

    def reject(
        self, status: int, reason: str = "", headers: tuple[tuple[str, str], ...] | list[Any] = ()
    ) -> None:
        """Answer `status` (4xx/5xx) with `reason` in the `aiowt-reason` header."""
        self._decide()
        if not self.gone:
            self._connection.reject(self.stream_id, status, reason, headers)

    def _decide(self) -> None:
        if self.decided:
            raise UsageError("this CONNECT request already has a verdict")
        self.decided = True


OnRequest = Callable[[IncomingSession], None]


def _nothing() -> None:
    pass


class WebTransportConnection(StreamBookkeeping):
    """One QUIC connection carrying HTTP/3 and any number of WebTransport sessions."""

    def __init__(
        self,
        engine: e.EngineConnection,
        *,
        is_client: bool,
        session_options: dict[str, Any] | None = None,
        limits: ConnectionLimits = _DEFAULT_LIMITS,
        now: float = 0.0,
    ) -> None:
        self.engine = engine
        self.is_client = is_client
        self.limits = limits
        self._session_options = session_options or {}
        self.sessions: dict[int, Session] = {}
        self._pending: dict[int, IncomingSession] = {}
        self._capsules: dict[int, CapsuleDecoder] = {}
        self._streams: dict[int, Stream] = {}
        self._drain_watch: set[Stream] = set()
        self._events: collections.deque[ConnectionEvent] = collections.deque()
        self._requests: dict[int, tuple[str, str, str]] = {}
        self._progress: list[asyncio.Future[None]] = []
        self._closing: set[int] = set()
        """Sessions this side closed whose peer has not ended its CONNECT stream yet."""
        self.peer_address: e.Address = ("", 0)
        self.is_closed = False
        self.accepting = True
        self.handshake_done = False
        self.settings_received = False
        self.send_ready: Callable[[], None] = _nothing
        """Called when there may be datagrams to send: the glue transmits soon after."""
        self._now = now
        self._idle_deadline: float | None = None
        self._arm_idle()

    # --- sans-I/O -------------------------------------------------------------------------
    def connect(self, addr: e.Address, now: float) -> None:
        self._now = now
        self.peer_address = addr
        self.engine.connect(addr, now)
        self._process()

    def receive_datagram(self, data: bytes, addr: e.Address, now: float) -> None:
        self._now = now
        self.peer_address = addr
        self.engine.receive_datagram(data, addr, now)
        self._process()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, e.Address]]:
        self._now = now
        datagrams = self.engine.datagrams_to_send(now)
        # Sending can end the connection too (an engine that fails while sending).
        self._process()
        if self._drain_watch:
            self._check_drain()
        if self._progress:
            waiters, self._progress = self._progress, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        return datagrams

    def get_timer(self) -> float | None:
        timer = self.engine.get_timer()
        idle = self._idle_deadline
        if idle is not None and (timer is None or idle < timer):
            return idle
        return timer

    def handle_timer(self, now: float) -> None:
        self._now = now
        idle = self._idle_deadline
        if idle is not None and now >= idle:
            self._idle_deadline = None
            if not self.sessions and not self._pending and not self.is_closed:
                # The engine's timers wait for the next call: run now, a closing timer
                # could end the connection before its CONNECTION_CLOSE is sent.
                self.close(H3_NO_ERROR, "no WebTransport session")
                return
        timer = self.engine.get_timer()
        if timer is not None and now >= timer:
            self.engine.handle_timer(now)
            self._process()

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None

    def close(self, error_code: int = H3_NO_ERROR, reason: str = "") -> None:
        """Close the QUIC connection (CONNECTION_CLOSE); sessions end when it is gone."""
        self.engine.close(error_code, reason)
        self._process()
        self.send_ready()

    def _arm_idle(self) -> None:
        if not self.is_client and not self.is_closed:
            self._idle_deadline = self._now + self.limits.idle_timeout

    # --- engine events --------------------------------------------------------------------
    def _process(self) -> None:
        engine = self.engine
        while (event := engine.next_event()) is not None:
            if self.is_closed:
                continue
            self._engine_event(event)

    def _engine_event(self, event: e.EngineEvent) -> None:
        if isinstance(event, e.WtStreamDataReceived):
            self._wt_stream_data(event)
        elif isinstance(event, e.WtDatagramReceived):
            session = self.sessions.get(event.session_id)
            if session is not None:
                session._emit(events.DatagramReceived(event.data))
        elif isinstance(event, e.ConnectDataReceived):
            self._connect_stream_data(event.stream_id, event.data, event.ended)
        elif isinstance(event, e.HeadersReceived):
            if self.is_client:
                self._response_received(event)
            else:
                self._request_received(event)
        elif isinstance(event, e.StreamAborted):
            if not self._stream_aborted(event) and event.reset:
                self._connect_stream_reset(event.stream_id, event.h3_code)
        elif isinstance(event, e.HandshakeDone):
            self.handshake_done = True
            self._events.append(HandshakeCompleted())
        elif isinstance(event, e.SettingsReceived):
            self.settings_received = True
            self._events.append(PeerSettingsReceived())
        elif isinstance(event, e.Terminated):
            self._connection_lost(event)
        elif isinstance(event, e.CidIssued | e.CidRetired):
            self._events.append(ConnectionIdChanged(event.cid, isinstance(event, e.CidIssued)))

    # --- handshake (server side) ----------------------------------------------------------
    def _request_received(self, event: e.HeadersReceived) -> None:
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
        if event.ended:
            # A WebTransport session lives as long as its CONNECT stream: one that ends
            # with its headers asks for a session that is over before it starts.
            log.info("refused: CONNECT stream ended with its headers", status=400)
            self.reject(stream_id, 400, "CONNECT stream ended with its headers")
            return
        if not self.accepting:
            self.reject(stream_id, 503, "server is shutting down", (("retry-after", "1"),))
            return
        if len(self.sessions) + len(self._pending) >= self.limits.max_sessions_per_connection:
            self.reject(stream_id, 429, "too many sessions on this connection")
            return
        incoming = IncomingSession(self, stream_id, request)
        self._pending[stream_id] = incoming
        self._events.append(SessionRequested(incoming))

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
        peer = self.peer_address
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
        self.engine.send_headers(stream_id, response)
        session = Session(self, stream_id, incoming.request, **self._session_options)
        self.sessions[stream_id] = session
        self._capsules[stream_id] = CapsuleDecoder()
        self.send_ready()
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
        self.engine.send_headers(stream_id, response, end_stream=True)
        self.send_ready()

    # --- handshake (client side) ----------------------------------------------------------
    def request_session(
        self, authority: str, path: str, headers: list[tuple[str, str]], protocol: str
    ) -> int:
        """Send an extended CONNECT (the peer's SETTINGS must be in); the answer comes as
        `SessionResponse` for the returned stream id."""
        settings = self.engine.received_settings
        if settings is None:
            raise UsageError("the server's SETTINGS are not in yet")
        if not settings.get(0x8):  # ENABLE_CONNECT_PROTOCOL
            raise HandshakeError(0, "server does not support extended CONNECT")
        stream_id = self.engine.next_request_stream_id()
        request = [
            (b":method", b"CONNECT"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b":protocol", protocol.encode()),
            (b"sec-webtransport-http3-draft02", b"1"),
        ] + [(k.lower().encode(), v.encode("utf-8", "surrogateescape")) for k, v in headers]
        self._requests[stream_id] = (authority, path, protocol)
        self.engine.send_headers(stream_id, request)
        self.send_ready()
        return stream_id

    def _response_received(self, event: e.HeadersReceived) -> None:
        asked = self._requests.pop(event.stream_id, None)
        if asked is None:
            return
        authority, path, protocol = asked
        decoded = [(k.decode(), v.decode("utf-8", "replace")) for k, v in event.headers]
        fields = dict(decoded)
        status_text = fields.get(":status", "0")
        status = int(status_text) if status_text.isdigit() else 0
        plain = [h for h in decoded if not h[0].startswith(":")]
        result: Session | HandshakeError
        if not 200 <= status < 300:
            result = HandshakeError(status, fields.get("aiowt-reason", ""), plain)
        else:
            path_only, _, query = path.partition("?")
            request = ConnectRequest(
                method="CONNECT",
                scheme="https",
                authority=authority,
                path=path_only,
                query_string=query,
                protocol=protocol,
                headers=tuple(plain),
                remote_addr=("", 0),
            )
            result = Session(self, event.stream_id, request, **self._session_options)
            self.sessions[event.stream_id] = result
            self._capsules[event.stream_id] = CapsuleDecoder()
        self._events.append(SessionResponse(event.stream_id, result))

    # --- the CONNECT stream: capsules and its end -----------------------------------------
    def _connect_stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        if ended:
            self._closing.discard(stream_id)
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

    def _connect_stream_reset(self, stream_id: int, h3_code: int) -> None:
        self._closing.discard(stream_id)
        pending = self._pending.pop(stream_id, None)
        if pending is not None:
            pending.gone = True
        session = self.sessions.get(stream_id)
        if session is not None:
            reason = f"CONNECT stream reset (0x{h3_code:x})"
            self._finish_session(session, CloseInfo(int(CloseCode.ABORTED), reason, True))

    def close_session(self, session: Session, code: int, reason: str) -> None:
        """Send the close capsule with FIN, reset the session's streams, end the session."""
        if session.session_id in self.sessions and not self.is_closed:
            self.engine.send_data(session.session_id, encode_close(code, reason), end_stream=True)
            self._closing.add(session.session_id)
            self.send_ready()
        self._finish_session(session, CloseInfo(code, reason, False))

    def _finish_session(self, session: Session, info: CloseInfo) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        self._capsules.pop(session.session_id, None)
        alive = not self.is_closed
        for stream in list(session.streams.values()):
            if alive:
                if stream._send_open:
                    self.engine.reset_stream(stream.stream_id, WT_SESSION_GONE)
                if stream.recv_open:
                    self.engine.stop_stream(stream.stream_id, WT_SESSION_GONE)
            # Wake readers and drainers before the stream leaves the session's table,
            # or one waiting in `read()` or `drain()` would never hear of the end.
            stream._session_ended()
            self._forget_stream(stream)
        if alive and info.by_peer:
            # Answer the peer's close with our FIN on the CONNECT stream, as the draft asks.
            self.engine.send_data(session.session_id, b"", end_stream=True)
        session._emit(events.SessionClosed(info))
        self.send_ready()
        if not self.sessions:
            self._arm_idle()

    # --- streams --------------------------------------------------------------------------
    def open_stream(self, session: Session, unidirectional: bool) -> Stream:
        stream_id = self.engine.open_wt_stream(session.session_id, unidirectional)
        stream = Stream(session, stream_id, unidirectional=unidirectional, opened_locally=True)
        self._streams[stream_id] = stream
        session.streams[stream_id] = stream
        self.send_ready()
        return stream

    def _wt_stream_data(self, event: e.WtStreamDataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            session = self.sessions.get(event.session_id) if event.session_id is not None else None
            if session is None:
                self._refuse(event.stream_id, WT_BUFFERED_STREAM_REJECTED)
                return
            stream = Stream(
                session,
                event.stream_id,
                unidirectional=bool(event.stream_id & 2),
                opened_locally=False,
            )
            self._streams[event.stream_id] = stream
            if not session._emit(events.StreamOpened(stream)):
                stream._send_open = False
                stream.recv_open = False
                self._refuse(event.stream_id, app_to_h3_code(0x2001))
                self._forget_stream(stream)
                return
        if event.ended:
            stream.peer_ended = True
        self._deliver(stream, event.data, event.ended)

    def _refuse(self, stream_id: int, h3_code: int) -> None:
        self.engine.stop_stream(stream_id, h3_code)
        if not stream_id & 2:
            self.engine.reset_stream(stream_id, h3_code)
        self.send_ready()

    def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        session = stream.session
        if data:
            session.bytes_out += len(data)
            if session.taps:
                session._emit(events.StreamDataSent(stream, data, end_stream))
        self.engine.send_stream_data(stream.stream_id, data, end_stream)
        self.send_ready()
        if end_stream:
            self._maybe_forget(stream)
        elif data:
            session._check_send_buffer(stream)

    def reset_stream(self, stream: Stream, code: int) -> None:
        self.engine.reset_stream(stream.stream_id, app_to_h3_code(code))
        self.send_ready()
        stream._wake_drain()
        self._maybe_forget(stream)

    def stop_stream(self, stream: Stream, code: int) -> None:
        self.engine.stop_stream(stream.stream_id, app_to_h3_code(code))
        self.send_ready()
        self._maybe_forget(stream)

    def _stream_aborted(self, event: e.StreamAborted) -> bool:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return False
        code = h3_to_app_code(event.h3_code)
        if event.reset and event.h3_code == WT_SESSION_GONE:
            # The peer ended the session: its close (capsule or CONNECT stream end) is on
            # its way, and readers of this stream hear of the session's end from it. (qh3
            # reports this reset before the capsule sent ahead of it.)
            stream.peer_ended = True
            return True
        if event.reset:
            stream.peer_ended = True
            if stream.recv_open:
                stream.recv_open = False
                stream.session._emit(events.StreamReset(stream, code))
        else:
            # The engine already reset our send side in answer to STOP_SENDING.
            stream._send_closed()
        self._maybe_forget(stream)
        return True

    def _forget_stream(self, stream: Stream) -> None:
        sid = stream.stream_id
        if self._streams.pop(sid, None) is None:
            return
        self._drain_watch.discard(stream)
        # A stream forgotten while the peer may still send on it (a session closed, a
        # stream refused): its late bytes must not reach HTTP/3, which would parse them
        # as frames and close the whole connection with H3_FRAME_UNEXPECTED.
        local_uni = stream.unidirectional and stream.opened_locally
        self.engine.forget_stream(sid, peer_may_send=not (local_uni or stream.peer_ended))
        stream.session._emit(events.StreamClosed(stream))

    def send_buffer_size(self, stream: Stream) -> int:
        return self.engine.send_buffer_size(stream.stream_id)

    # --- delivery -------------------------------------------------------------------------
    def stream_delivered(self, stream_id: int) -> bool:
        """All we sent on `stream_id`, its end included, is acknowledged (or never can be)."""
        return self.is_closed or self.engine.stream_delivered(stream_id)

    async def wait_delivered(self, stream_ids: Iterable[int], timeout: float) -> bool:
        """Wait until the peer acknowledged all we sent on `stream_ids` and, for a session
        this side closed, ended its CONNECT stream in answer; up to `timeout`.

        How a close capsule gets ahead of the CONNECTION_CLOSE that follows it: QUIC
        gives no ordering between the two, so the capsule must be acknowledged first; and
        an acknowledgement is the peer's QUIC stack, not its application (Chromium then
        sometimes reported the CONNECTION_CLOSE, "Connection lost", instead of the
        session's code): the peer's own end of the CONNECT stream is its application's
        answer. Checked after each exchange with the engine.
        """
        ids = tuple(stream_ids)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not all(
                    self.stream_delivered(sid) and (self.is_closed or sid not in self._closing)
                    for sid in ids
                ):
                    waiter = loop.create_future()
                    self._progress.append(waiter)
                    await waiter
        except TimeoutError:
            return False
        return True

    # --- datagrams ------------------------------------------------------------------------
    def max_datagram_payload(self, session_id: int) -> int:
        return self.engine.max_datagram_payload(session_id)

    def send_datagram(self, session: Session, data: bytes) -> bool:
        if self.engine.pending_datagrams() >= self.limits.max_pending_datagrams:
            session.datagrams_dropped_out += 1
            return False
        session.bytes_out += len(data)
        if session.taps:
            session._emit(events.DatagramSent(data))
        self.engine.send_wt_datagram(session.session_id, data)
        self.send_ready()
        return True

    # --- connection end -------------------------------------------------------------------
    def _connection_lost(self, event: e.Terminated) -> None:
        self.is_closed = True
        self._closing.clear()
        self._idle_deadline = None
        reason = event.reason or f"connection closed (0x{event.error_code:x})"
        for session in list(self.sessions.values()):
            self._finish_session(session, CloseInfo(int(CloseCode.ABORTED), reason, True))
        for incoming in self._pending.values():
            incoming.gone = True
        self._pending.clear()
        for stream_id in self._requests:
            self._events.append(SessionResponse(stream_id, HandshakeError(0, reason)))
        self._requests.clear()
        self._events.append(Terminated(reason, event.error_code))
        waiters, self._progress = self._progress, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


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
