"""The one place that touches sockets: a listening endpoint and the client's connect()."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from ._protocol import WebTransportProtocol
from .connection import IncomingSession, OnRequest, WebTransportConnection
from .engine import Engine, EngineConnection, QuicOptions, get_engine
from .errors import HandshakeError, UsageError
from .limits import ConnectionLimits
from .session import Session

__all__ = ["IncomingSession", "Listener", "OnRequest", "connect", "listen"]

RECEIVE_BUFFER = 4 * 1024 * 1024
"""The kernel default (~212 KB) dropped first-flight packets under handshake load."""


def _udp_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Listener(asyncio.DatagramProtocol):
    """A bound UDP socket accepting QUIC connections, each a `WebTransportProtocol`.

    It routes each datagram by its destination connection id, as the engines' own
    servers do, so that the connections it makes are engine-neutral glue.
    """

    def __init__(
        self,
        engine: Engine,
        options: QuicOptions,
        on_request: OnRequest,
        *,
        session_options: dict[str, Any] | None,
        limits: ConnectionLimits,
    ) -> None:
        self.engine = engine
        self._config = engine.server_config(options)
        self._on_request = on_request
        self._session_options = session_options
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._routes: dict[bytes, WebTransportProtocol] = {}
        self._accepting = True
        self.connections: set[WebTransportProtocol] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        # The socket is shared: each connection finishes its closing period without it.
        self._transport = None
        for connection in list(self.connections):
            connection.connection_lost(exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            cid, may_start, reply = self.engine.route(data, self._config)
        except ValueError:
            return  # not QUIC
        if reply is not None:
            if self._transport is not None:
                self._transport.sendto(reply, addr)
            return
        protocol = self._routes.get(cid)
        if protocol is None:
            if not may_start or self._transport is None:
                return
            protocol = self._new_connection(self.engine.server(self._config, cid), cid)
        protocol.datagram_received(data, addr)

    def _new_connection(self, engine: EngineConnection, cid: bytes) -> WebTransportProtocol:
        connection = WebTransportConnection(
            engine,
            is_client=False,
            session_options=self._session_options,
            limits=self._limits,
            now=self._loop.time(),
        )
        connection.accepting = self._accepting
        protocol = WebTransportProtocol(
            connection,
            on_request=self._on_request,
            on_terminated=self._terminated,
            on_cid=self._cid_changed,
        )
        assert self._transport is not None
        protocol.connection_made(self._transport)
        self._routes[cid] = self._routes[engine.host_cid] = protocol
        self.connections.add(protocol)
        return protocol

    def _cid_changed(self, protocol: WebTransportProtocol, cid: bytes, issued: bool) -> None:
        if issued:
            self._routes[cid] = protocol
        elif self._routes.get(cid) is protocol:
            del self._routes[cid]

    def _terminated(self, protocol: WebTransportProtocol) -> None:
        self.connections.discard(protocol)
        for cid in [cid for cid, known in self._routes.items() if known is protocol]:
            del self._routes[cid]

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None
        sockname = self._transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def stop_accepting(self) -> None:
        """New CONNECT requests are answered 503 from now on."""
        self._accepting = False
        for connection in self.connections:
            connection.accepting = False

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE) and the socket."""
        for connection in list(self.connections):
            connection.close()
            connection.transmit()
        if self._transport is not None:
            self._transport.close()


async def listen(
    host: str,
    port: int,
    options: QuicOptions,
    on_request: OnRequest,
    *,
    engine: str | None = None,
    session_options: dict[str, Any] | None = None,
    limits: ConnectionLimits | None = None,
    reuse_port: bool = False,
) -> Listener:
    """Bind `host:port` and serve WebTransport; `on_request` gets every valid CONNECT."""
    loop = asyncio.get_running_loop()
    chosen = get_engine(engine)
    sock = _udp_socket(host, port, reuse_port=reuse_port)
    listener = Listener(
        chosen,
        options,
        on_request,
        session_options=session_options,
        limits=limits or ConnectionLimits(),
    )
    await loop.create_datagram_endpoint(lambda: listener, sock=sock)
    return listener


async def connect(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    cert_hash: bytes | str | None = None,
    verify: bool = True,
    ca_file: str | None = None,
    protocol: str = "webtransport",
    timeout: float = 10.0,
    idle_timeout: float = 30.0,
    session_options: dict[str, Any] | None = None,
    engine: str | None = None,
) -> Session:
    """Open a WebTransport session to `url` (`https://host:port/path?query`), or a session
    over WebSocket to a `wss://` or `ws://` URL (the `websocket` extra; `engine` is QUIC's
    and does not apply).

    `cert_hash` pins the server certificate's SHA-256 (bytes or hex), as browsers'
    `serverCertificateHashes` does; otherwise the certificate is verified against the
    system store or `ca_file`, unless `verify=False`. A refused handshake raises
    `HandshakeError` with the server's status and reason. `engine` picks the QUIC
    library (`aioquic` or `qh3`, see `aiowt.transport.engine`).
    """
    parts = urlsplit(url)
    if parts.scheme in ("wss", "ws"):
        from .websocket import connect_websocket

        return await connect_websocket(
            url,
            headers=headers,
            cert_hash=cert_hash,
            verify=verify,
            ca_file=ca_file,
            timeout=timeout,
            idle_timeout=idle_timeout,
            session_options=session_options,
        )
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"a WebTransport URL looks like https://host:port/path, not {url!r}")
    host, port = parts.hostname, parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    pinned = bytes.fromhex(cert_hash) if isinstance(cert_hash, str) else cert_hash
    options = QuicOptions(
        is_client=True,
        idle_timeout=idle_timeout,
        server_name=host,
        verify=verify and pinned is None,
        ca_file=ca_file,
    )
    quic = get_engine(engine).client(options)

    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, *_, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
    sock.setblocking(False)
    connection = WebTransportProtocol(
        WebTransportConnection(
            quic, is_client=True, session_options=session_options, now=loop.time()
        )
    )
    transport, _ = await loop.create_datagram_endpoint(lambda: connection, sock=sock)

    async def release(abrupt: bool) -> None:
        if not abrupt:
            # The close capsule must be acknowledged before CONNECTION_CLOSE overtakes it.
            await connection.wait_delivered([session.session_id], 1.0)
        connection.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(connection.wait_closed(), 1.0)
        transport.close()

    try:
        async with asyncio.timeout(timeout):
            connection.connect((str(address[0]), int(address[1])))
            try:
                await connection.wait_connected()
            except HandshakeError as exc:
                raise _tls_failure(exc, connection.close_code, options.verify) from None
            if pinned is not None:
                _check_pin(quic, pinned)
            session = await connection.open_session(authority, path, list(headers), protocol)
    except TimeoutError:
        connection.close()
        transport.close()
        raise TimeoutError(
            f"no answer from {host} port {port} within {timeout:g} s: is the server running"
            " and is UDP to it open?"
        ) from None
    except BaseException:
        connection.close()
        transport.close()
        raise
    session._release = release
    return session


def _tls_failure(exc: HandshakeError, code: int | None, verified: bool) -> HandshakeError:
    """Say what to do when the server's certificate was refused."""
    if code is None or not 0x100 <= code <= 0x1FF or not verified:
        return exc
    return HandshakeError(
        0,
        f"the server's certificate is not trusted ({exc.reason}): pass cert_hash= with its"
        " SHA-256 (a development server prints it), ca_file= with its CA, or verify=False",
    )


def _check_pin(quic: EngineConnection, pinned: bytes) -> None:
    certificate = quic.peer_certificate_der()
    if certificate is None:
        raise HandshakeError(0, "server sent no certificate")
    if hashlib.sha256(certificate).digest() != pinned:
        raise HandshakeError(0, "server certificate does not match the pinned SHA-256")
