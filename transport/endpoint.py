"""The one place that touches sockets: a listening endpoint and the client's connect()."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.serialization import Encoding

from ._protocol import IncomingSession, OnRequest, WebTransportProtocol
from .errors import HandshakeError, UsageError
from .limits import ConnectionLimits
from .session import Session

__all__ = ["IncomingSession", "Listener", "OnRequest", "connect", "listen", "quic_configuration"]

DEFAULT_MAX_DATAGRAM_FRAME_SIZE = 65536
RECEIVE_BUFFER = 4 * 1024 * 1024
"""The kernel default (~212 KB) dropped first-flight packets under handshake load."""


def quic_configuration(
    *, is_client: bool, idle_timeout: float = 30.0, **options: Any
) -> QuicConfiguration:
    """A QUIC configuration for HTTP/3 WebTransport (datagrams enabled on both sides)."""
    return QuicConfiguration(
        alpn_protocols=H3_ALPN,
        is_client=is_client,
        max_datagram_frame_size=DEFAULT_MAX_DATAGRAM_FRAME_SIZE,
        idle_timeout=idle_timeout,
        **options,
    )


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


class Listener:
    """A bound UDP socket accepting QUIC connections, each a `WebTransportProtocol`."""

    def __init__(self, server: QuicServer, transport: asyncio.DatagramTransport) -> None:
        self._server = server
        self._transport = transport
        self.connections: set[WebTransportProtocol] = set()

    @property
    def address(self) -> tuple[str, int]:
        sockname = self._transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def stop_accepting(self) -> None:
        """New CONNECT requests are answered 503 from now on."""
        for connection in self.connections:
            connection.accepting = False
        self._accepting = False

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE) and the socket."""
        for connection in list(self.connections):
            connection.close()
        self._server.close()


async def listen(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    on_request: OnRequest,
    *,
    session_options: dict[str, Any] | None = None,
    limits: ConnectionLimits | None = None,
    reuse_port: bool = False,
) -> Listener:
    """Bind `host:port` and serve WebTransport; `on_request` gets every valid CONNECT."""
    loop = asyncio.get_running_loop()
    sock = _udp_socket(host, port, reuse_port=reuse_port)
    listener: Listener | None = None

    def create_protocol(quic: QuicConnection, stream_handler: Any = None) -> WebTransportProtocol:
        assert listener is not None
        protocol = WebTransportProtocol(
            quic,
            stream_handler,
            on_request=on_request,
            on_terminated=listener.connections.discard,
            session_options=session_options,
            limits=limits or ConnectionLimits(),
        )
        protocol.accepting = getattr(listener, "_accepting", True)
        listener.connections.add(protocol)
        return protocol

    transport, server = await loop.create_datagram_endpoint(
        functools.partial(QuicServer, configuration=configuration, create_protocol=create_protocol),
        sock=sock,
    )
    listener = Listener(server, transport)
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
) -> Session:
    """Open a WebTransport session to `url` (`https://host:port/path?query`).

    `cert_hash` pins the server certificate's SHA-256 (bytes or hex), as browsers'
    `serverCertificateHashes` does; otherwise the certificate is verified against the
    system store or `ca_file`, unless `verify=False`. A refused handshake raises
    `HandshakeError` with the server's status and reason.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"a WebTransport URL looks like https://host:port/path, not {url!r}")
    host, port = parts.hostname, parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    pinned = bytes.fromhex(cert_hash) if isinstance(cert_hash, str) else cert_hash

    configuration = quic_configuration(is_client=True, idle_timeout=idle_timeout, server_name=host)
    if pinned is not None or not verify:
        configuration.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        configuration.load_verify_locations(cafile=ca_file)

    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, *_, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
    sock.setblocking(False)
    quic = QuicConnection(configuration=configuration)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: WebTransportProtocol(quic, session_options=session_options), sock=sock
    )
    connection: WebTransportProtocol = proto

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
            connection.connect((address[0], address[1]))
            await connection.wait_connected()
            if pinned is not None:
                _check_pin(quic, pinned)
            session = await connection.open_session(authority, path, list(headers), protocol)
    except BaseException:
        connection.close()
        transport.close()
        raise
    session._release = release
    return session


def _check_pin(quic: QuicConnection, pinned: bytes) -> None:
    certificate = quic.tls._peer_certificate
    if certificate is None:
        raise HandshakeError(0, "server sent no certificate")
    actual = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
    if actual != pinned:
        raise HandshakeError(0, "server certificate does not match the pinned SHA-256")
