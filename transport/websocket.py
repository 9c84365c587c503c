"""WebSocket beside HTTP/3: the same sessions over TCP, for clients that cannot reach QUIC.

The HTTP/1.1 upgrade and the WebSocket framing are the `websockets` library's sans-I/O
core (`ServerProtocol`, `ClientProtocol`); the session's streams and datagrams ride on
it as `mux.py` frames; this module is the asyncio glue between a TCP socket and those
two. A server hands each valid upgrade request to `on_request` as an
`IncomingWebSocket`, which answers like `IncomingSession`: `accept()` (101, and the
live `Session`) or `reject(status, reason)` (that status, `aiowt-reason`, and the
headers the middleware gave, such as `Retry-After`).

Needs the `websocket` extra (`pip install 'aiowt[websocket]'`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import structlog

from .codes import CloseCode
from .connection import _header_safe
from .context import CloseInfo
from .errors import HandshakeError, SessionClosedError, UsageError
from .limits import ConnectionLimits
from .mux import MAX_FRAME, MuxConnection, MuxLimits
from .request import ConnectRequest
from .session import Session

if TYPE_CHECKING:
    from websockets.client import ClientProtocol
    from websockets.http11 import Request, Response
    from websockets.server import ServerProtocol

__all__ = [
    "IncomingWebSocket",
    "WebSocketListener",
    "connect_websocket",
    "listen_websocket",
    "server_ssl_context",
]

log = structlog.get_logger("aiowt.websocket")

EXTRA_HINT = "the WebSocket transport needs the websocket extra: pip install 'aiowt[websocket]'"
_WRITE_HIGH = 64 * 1024
"""The socket's write buffer above which stream data waits (and datagrams drop)."""
_CLOSE_TIMEOUT = 5.0
"""Seconds a closing WebSocket waits for the peer's close before dropping TCP."""
_WS_CLOSE_CODES = {1009: CloseCode.MESSAGE_TOO_LARGE, 1002: CloseCode.PROTOCOL_ERROR}

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
"""What HTTP/1.1 carries (RFC 9110 field-value); HTTP/3 takes more."""

OnWebSocketRequest = Callable[["IncomingWebSocket"], None]


def _websockets() -> Any:
    try:
        import websockets.client
        import websockets.frames
        import websockets.protocol
        import websockets.server
        import websockets.uri
    except ImportError:
        raise UsageError(EXTRA_HINT) from None
    return websockets


class IncomingWebSocket:
    """An upgrade request waiting for its verdict: `accept()` or `reject()`, exactly once."""

    stream_id = 0

    def __init__(
        self, connection: WebSocketConnection, request: ConnectRequest, response: Response
    ) -> None:
        self._connection = connection
        self.request = request
        self._response = response
        self.decided = False
        self.gone = False
        """The client left before the verdict: `accept()` raises, `reject()` does nothing."""

    def __repr__(self) -> str:
        return f"<IncomingWebSocket {self.request.path}>"

    @property
    def connection_alive(self) -> bool:
        return not self.gone

    def accept(self, headers: Sequence[tuple[str, str]] = ()) -> Session:
        """Answer 101 (with `headers`) and return the live session."""
        self._decide()
        if self.gone:
            raise SessionClosedError(int(CloseCode.ABORTED), "connection closed before accept")
        for name, value in headers:
            self._response.headers[name] = value
        return self._connection.accept(self.request, self._response)

    def reject(
        self, status: int, reason: str = "", headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Answer `status` with `reason` in `aiowt-reason` (and the body); close the socket."""
        self._decide()
        if not self.gone:
            self._connection.reject(status, reason, headers)

    def _decide(self) -> None:
        if self.decided:
            raise UsageError("this upgrade request already has a verdict")
        self.decided = True


class WebSocketConnection(asyncio.Protocol):
    """One TCP connection: the WebSocket protocol below, the session's frames above."""

    def __init__(
        self,
        protocol: ServerProtocol | ClientProtocol,
        *,
        is_client: bool,
        scheme: str,
        on_request: OnWebSocketRequest | None = None,
        session_options: dict[str, Any] | None = None,
        limits: ConnectionLimits | None = None,
        mux_limits: MuxLimits | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        self.ws = protocol
        self.idle_timeout = idle_timeout
        """A peer silent this long (not even a pong) is gone: its session ends
        IDLE_TIMEOUT. A ping goes out after a third of it without a byte received."""
        self.is_client = is_client
        self.scheme = scheme
        self.mux = MuxConnection(
            self._send_frame,
            is_client=is_client,
            limits=mux_limits,
            session_options=session_options,
        )
        self.mux.on_session_end = self._session_ended
        self.limits = limits or ConnectionLimits()
        self._on_request = on_request
        websockets = _websockets()
        self._frames = websockets.frames
        self._state = websockets.protocol.State
        self._transport: asyncio.Transport | None = None
        self._incoming: IncomingWebSocket | None = None
        self._fragments: bytearray | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._heard_at = 0.0
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.opened: asyncio.Future[Session] = loop.create_future()
        """Client side: the session once the server answered 101 (or the refusal)."""
        self.client_request: ConnectRequest | None = None
        self.peer_address: tuple[str, int] = ("", 0)
        self.on_made: Callable[[WebSocketConnection], None] = lambda connection: None
        """Called when the socket is up (after TLS), before anything is read."""

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.peer_address} {self.mux!r}>"

    # --- asyncio ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=_WRITE_HIGH)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer_address = (str(peer[0]), int(peer[1]))
        self.on_made(self)
        if not self.is_client:
            # A socket that never sends its upgrade request holds nothing for long.
            self._request_timer = asyncio.get_running_loop().call_later(
                self.limits.idle_timeout, self._transport.abort
            )
        if self.is_client:
            client = cast("ClientProtocol", self.ws)
            request = client.connect()
            assert self.client_request is not None
            for name, value in self.client_request.headers:
                request.headers[name] = value
            client.send_request(request)
            self._flush()

    def data_received(self, data: bytes) -> None:
        self._heard_at = asyncio.get_running_loop().time()
        self.ws.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for timer in (self._close_timer, self._request_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        if self._incoming is not None and not self._incoming.decided:
            self._incoming.gone = True
        code = self.ws.close_code
        if code is not None and code != 1006 and code in _WS_CLOSE_CODES:
            reason = self.ws.close_reason or f"websocket closed ({code})"
            self.mux.connection_ended(CloseInfo(int(_WS_CLOSE_CODES[code]), reason, True))
        elif code in (1000, 1001) and self.ws.close_rcvd is not None:
            self.mux.connection_ended(CloseInfo(int(CloseCode.NORMAL), "", True))
        else:
            self.mux.connection_lost(str(exc) if exc else "connection lost")
        if self.is_client and not self.opened.done():
            self.opened.set_exception(HandshakeError(0, "connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.mux.pause_writing()

    def resume_writing(self) -> None:
        self.mux.resume_writing()

    # --- the WebSocket protocol -------------------------------------------------------------
    def _process(self) -> None:
        frames = self._frames
        for event in self.ws.events_received():
            if isinstance(event, frames.Frame):
                self._frame(event)
            elif self.is_client:
                self._response(cast("Response", event))
            else:
                self._request(cast("Request", event))
        ws_error = self.ws.close_sent
        if ws_error is not None and ws_error.code in _WS_CLOSE_CODES and self.ws.close_rcvd is None:
            # The library failed the connection (oversized or malformed WebSocket frame).
            reason = ws_error.reason or f"websocket error {ws_error.code}"
            self.mux.connection_ended(CloseInfo(int(_WS_CLOSE_CODES[ws_error.code]), reason, False))
        self._flush()

    def _frame(self, frame: Any) -> None:
        opcodes = self._frames.Opcode
        if frame.opcode is opcodes.BINARY or frame.opcode is opcodes.CONT:
            if frame.opcode is opcodes.BINARY and frame.fin:
                self.mux.receive_frame(frame.data)
                return
            if frame.opcode is opcodes.BINARY:
                self._fragments = bytearray()
            if self._fragments is None:
                return
            self._fragments += frame.data
            if len(self._fragments) > MAX_FRAME:
                self._fail(1009, "message too big")
                return
            if frame.fin:
                message, self._fragments = bytes(self._fragments), None
                self.mux.receive_frame(message)
        elif frame.opcode is opcodes.TEXT:
            self._fail(1003, "text messages are not part of the session framing")

    def _fail(self, code: int, reason: str) -> None:
        session = self.mux.session
        if session is not None and not session.closed:
            mapped = CloseCode.MESSAGE_TOO_LARGE if code == 1009 else CloseCode.PROTOCOL_ERROR
            session.close(mapped, reason)

    def _send_frame(self, frame: bytes) -> None:
        if self.ws.state is self._state.OPEN:
            self.ws.send_binary(frame)
            self._flush()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                # TLS cannot half-close: the end of our side is the end of the socket
                # (the peer waits for it before closing its own).
                transport.close()
                break
        if self.ws.close_expected() and self._close_timer is None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(_CLOSE_TIMEOUT, transport.abort)
        if self.ws.state is self._state.CLOSED:
            transport.close()
        elif not transport.is_closing():
            self.mux.buffered = transport.get_write_buffer_size()

    def _watch_idle(self) -> None:
        """Every third of the idle timeout: ping a quiet peer; end a silent one."""
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._heard_at
        session = self.mux.session
        if session is None or session.closed or self._transport is None:
            return
        if quiet >= self.idle_timeout:
            session.close(CloseCode.IDLE_TIMEOUT, f"nothing heard for {self.idle_timeout:g} s")
            self._transport.abort()
            return
        if quiet >= self.idle_timeout / 3:
            self.ws.send_ping(b"")
            self._flush()
        self._idle_timer = loop.call_later(self.idle_timeout / 3, self._watch_idle)

    def _start_idle_watch(self) -> None:
        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()
        self._idle_timer = loop.call_later(self.idle_timeout / 3, self._watch_idle)

    def _session_ended(self, info: CloseInfo) -> None:
        if self.ws.state is self._state.OPEN:
            self.ws.send_close(1000, "")
            self._flush()

    # --- server side -----------------------------------------------------------------------
    def _request(self, request: Request) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
        server = cast("ServerProtocol", self.ws)
        response = server.accept(request)
        if response.status_code != 101:
            server.send_response(response)
            return
        size = sum(len(k) + len(v) for k, v in request.headers.raw_items())
        if size > self.limits.max_header_bytes:
            self.reject(431, "request header block too large")
            return
        path, _, query = request.path.partition("?")
        connect_request = ConnectRequest(
            method="GET",
            scheme=self.scheme,
            authority=request.headers.get("Host", ""),
            path=path,
            query_string=query,
            protocol="websocket",
            headers=tuple((k.lower(), v) for k, v in request.headers.raw_items()),
            remote_addr=self.peer_address,
        )
        self._incoming = IncomingWebSocket(self, connect_request, response)
        if self._on_request is None:
            self.reject(404, "this endpoint takes no sessions")
            return
        self._on_request(self._incoming)

    def accept(self, request: ConnectRequest, response: Response) -> Session:
        cast("ServerProtocol", self.ws).send_response(response)
        session = self.mux.start_session(request)
        self._flush()
        self._start_idle_watch()
        return session

    def reject(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        server = cast("ServerProtocol", self.ws)
        try:
            response = server.reject(status, f"{reason}\n")
        except ValueError:  # a status http.HTTPStatus does not know
            response = server.reject(400, f"{reason}\n")
        if reason:
            response.headers["aiowt-reason"] = _header_safe(reason)
        for name, value in headers:
            response.headers[name] = value
        server.send_response(response)
        self._flush()

    # --- client side -----------------------------------------------------------------------
    def _response(self, response: Response) -> None:
        if self.opened.done():
            return
        client = cast("ClientProtocol", self.ws)
        if client.handshake_exc is not None or response.status_code != 101:
            headers = [(k.lower(), v) for k, v in response.headers.raw_items()]
            reason = response.headers.get("aiowt-reason", "")
            if response.status_code == 101:  # a 101 the library found invalid
                reason = f"invalid upgrade response: {client.handshake_exc}"
                status = 0
            else:
                status = response.status_code
            self.opened.set_exception(HandshakeError(status, reason, headers))
            return
        assert self.client_request is not None
        request = self.client_request
        session = self.mux.start_session(
            ConnectRequest(
                method="GET",
                scheme=request.scheme,
                authority=request.authority,
                path=request.path,
                query_string=request.query_string,
                protocol="websocket",
                headers=tuple((k.lower(), v) for k, v in response.headers.raw_items()),
                remote_addr=self.peer_address,
            )
        )
        self._start_idle_watch()
        self.opened.set_result(session)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """End the session GOING_AWAY if it is open, then the socket."""
        session = self.mux.session
        if session is not None and not session.closed:
            session.close(CloseCode.GOING_AWAY, "server shutting down")
        if self._transport is not None:
            self._transport.close()


class WebSocketListener:
    """A TCP listener whose connections carry sessions; `close()` ends them all."""

    def __init__(self, server: asyncio.Server, connections: set[WebSocketConnection]) -> None:
        self._server = server
        self.connections = connections

    def __repr__(self) -> str:
        return f"<WebSocketListener {self.address} connections={len(self.connections)}>"

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def stop_accepting(self) -> None:
        self._server.close()

    async def close(self) -> None:
        self._server.close()
        for connection in list(self.connections):
            connection.close()
        if self.connections:
            await asyncio.wait([c.closed for c in self.connections], timeout=_CLOSE_TIMEOUT)
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()


async def listen_websocket(
    host: str | None,
    port: int,
    on_request: OnWebSocketRequest,
    *,
    ssl_context: ssl.SSLContext | None = None,
    session_options: dict[str, Any] | None = None,
    limits: ConnectionLimits | None = None,
    mux_limits: MuxLimits | None = None,
    reuse_port: bool = False,
    idle_timeout: float = 30.0,
) -> WebSocketListener:
    """Listen on TCP `host:port` (TLS when `ssl_context` is given) for WebSocket sessions."""
    websockets = _websockets()
    connections: set[WebSocketConnection] = set()
    scheme = "https" if ssl_context is not None else "http"

    def factory() -> WebSocketConnection:
        connection = WebSocketConnection(
            websockets.server.ServerProtocol(max_size=MAX_FRAME),
            is_client=False,
            scheme=scheme,
            on_request=on_request,
            session_options=session_options,
            limits=limits,
            mux_limits=mux_limits,
            idle_timeout=idle_timeout,
        )
        # Listed once its socket is up: a TLS handshake that fails never gets that far,
        # and must leave nothing behind.
        connection.on_made = connections.add
        connection.closed.add_done_callback(lambda _: connections.discard(connection))
        return connection

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, host, port, ssl=ssl_context, reuse_port=reuse_port or None
    )
    return WebSocketListener(server, connections)


async def connect_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    cert_hash: bytes | str | None = None,
    verify: bool = True,
    ca_file: str | None = None,
    timeout: float = 10.0,
    idle_timeout: float = 30.0,
    session_options: dict[str, Any] | None = None,
) -> Session:
    """Open a session over WebSocket to `url` (`wss://` or `ws://`; `https://` means wss).

    The same arguments as `connect()`: `cert_hash` pins the server certificate's
    SHA-256; a refused upgrade raises `HandshakeError` with the status and reason.
    """
    websockets = _websockets()
    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise UsageError(f"a WebSocket URL looks like wss://host:port/path, not {url!r}")
    secure = scheme == "wss"
    host, port = parts.hostname, parts.port or (443 if secure else 80)
    pinned = bytes.fromhex(cert_hash) if isinstance(cert_hash, str) else cert_hash
    context: ssl.SSLContext | None = None
    if secure:
        context = ssl.create_default_context(cafile=ca_file)
        if pinned is not None or not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    for name, value in headers:
        if not _HEADER_VALUE.fullmatch(value) or not _TOKEN.fullmatch(name):
            raise UsageError(f"header {name!r} cannot be sent in an HTTP/1.1 request")
    target = urlsplit(url)._replace(scheme=scheme).geturl()
    uri = websockets.uri.parse_uri(target)
    loop = asyncio.get_running_loop()
    connection = WebSocketConnection(
        websockets.client.ClientProtocol(uri, max_size=MAX_FRAME),
        is_client=True,
        scheme="https" if secure else "http",
        session_options=session_options,
        idle_timeout=idle_timeout,
    )
    connection.client_request = ConnectRequest(
        method="GET",
        scheme="https" if secure else "http",
        authority=f"{host}:{port}",
        path=parts.path or "/",
        query_string=parts.query,
        protocol="websocket",
        headers=tuple(headers),
        remote_addr=("", 0),
    )
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                transport, _ = await loop.create_connection(
                    lambda: connection,
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if secure else None,
                )
            except ssl.SSLCertVerificationError as exc:
                raise HandshakeError(
                    0,
                    f"the server's certificate is not trusted ({exc.verify_message}): pass"
                    " cert_hash= with its SHA-256 (a development server prints it), ca_file="
                    " with its CA, or verify=False",
                ) from None
            except OSError as exc:
                raise HandshakeError(
                    0, f"cannot reach {host} port {port}: {exc.strerror or exc}"
                ) from None
            if pinned is not None:
                der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
                if der is None or hashlib.sha256(der).digest() != pinned:
                    raise HandshakeError(0, "server certificate does not match the pinned SHA-256")
            session = await connection.opened
    except TimeoutError:
        if transport is not None:
            transport.abort()
        raise TimeoutError(
            f"no answer from {host} port {port} within {timeout:g} s: is the server running"
            " and is TCP to it open?"
        ) from None
    except BaseException:
        if transport is not None:
            transport.abort()
        raise

    async def release(abrupt: bool) -> None:
        if abrupt:
            connection.abort()
            return
        connection.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await connection.closed
        connection.abort()

    session._release = release
    return session


def server_ssl_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS server context from PEM bytes (the same certificate the QUIC side serves)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # `ssl` loads chains from files only: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="aiowt-tls-") as folder:
        cert_path = os.path.join(folder, "cert.pem")
        key_path = os.path.join(folder, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
        context.load_cert_chain(cert_path, key_path)
    return context
