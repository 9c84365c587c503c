"""Two connections joined in memory: the real protocol stack with no sockets.

aioquic's own tests pair two connections and pass datagrams between them; this does the
same through asyncio, so a test (or the testing kit) can drive a server's routes,
middleware and handler actors exactly as a network client would, minus the kernel.
Either side may run either engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ._protocol import WebTransportProtocol
from .connection import OnRequest, WebTransportConnection
from .engine import QuicOptions, get_engine
from .limits import ConnectionLimits
from .session import Session

__all__ = ["connect_in_memory"]

_CLIENT_ADDR = ("127.0.0.1", 50000)
_SERVER_ADDR = ("127.0.0.1", 4433)


class _MemoryTransport(asyncio.DatagramTransport):
    """Delivers each datagram to the peer on the next loop iteration.

    `protocol` is the side this transport belongs to (made on the first datagram, for
    the server); `peer` is the other side's transport (None holds every datagram).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, local_addr: tuple[str, int]) -> None:
        super().__init__()
        self._loop = loop
        self._local_addr = local_addr
        self.peer: _MemoryTransport | None = None
        self.receive: Any = None
        self.protocol: WebTransportProtocol | None = None
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        peer = self.peer
        if not self._closing and peer is not None:
            self._loop.call_soon(peer.receive, bytes(data), self._local_addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._local_addr if name == "sockname" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True


async def connect_in_memory(
    server_options: QuicOptions,
    on_request: OnRequest,
    path: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    session_options: dict[str, Any] | None = None,
    limits: ConnectionLimits | None = None,
    timeout: float = 10.0,
    engine: str | None = None,
    client_engine: str | None = None,
) -> Session:
    """Open a client session to `on_request` through an in-memory QUIC connection.

    The returned client session behaves like one from `connect()`: `aclose()` closes
    the session and its connection, `abort()` drops the connection without a capsule.
    `engine` runs the server side, `client_engine` (the same by default) the client.
    """
    loop = asyncio.get_running_loop()
    server_engine = get_engine(engine)
    server_config = server_engine.server_config(server_options)
    client_quic = get_engine(client_engine or server_engine.name).client(
        QuicOptions(is_client=True, server_name="localhost", verify=False)
    )
    client = WebTransportProtocol(
        WebTransportConnection(
            client_quic, is_client=True, session_options=session_options, now=loop.time()
        )
    )
    client_transport = _MemoryTransport(loop, _CLIENT_ADDR)
    server_transport = _MemoryTransport(loop, _SERVER_ADDR)
    client.connection_made(client_transport)
    client_transport.protocol = client
    client_transport.peer, server_transport.peer = server_transport, client_transport

    def to_server(data: bytes, addr: tuple[str, int]) -> None:
        server = server_transport.protocol
        if server is None:
            cid, may_start, _ = server_engine.route(data, server_config)
            if not may_start:
                return
            server = WebTransportProtocol(
                WebTransportConnection(
                    server_engine.server(server_config, cid),
                    is_client=False,
                    session_options=session_options,
                    limits=limits or ConnectionLimits(),
                    now=loop.time(),
                ),
                on_request=on_request,
            )
            server.connection_made(server_transport)
            server_transport.protocol = server
        if not server.is_closed:
            server.datagram_received(data, addr)

    def to_client(data: bytes, addr: tuple[str, int]) -> None:
        if not client.is_closed:
            client.datagram_received(data, addr)

    server_transport.receive = to_server
    client_transport.receive = to_client

    def close_server() -> None:
        if server_transport.protocol is not None:
            server_transport.protocol.close()

    async def release(abrupt: bool) -> None:
        if not abrupt:
            await client.wait_delivered([session.session_id], 1.0)
        client.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(client.wait_closed(), 1.0)
        client_transport.close()
        close_server()

    try:
        async with asyncio.timeout(timeout):
            client.connect(_SERVER_ADDR)
            await client.wait_connected()
            session = await client.open_session(
                "localhost", path, list(headers or ()), "webtransport"
            )
    except BaseException:
        client.close()
        close_server()
        raise
    session._release = release
    return session
