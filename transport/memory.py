"""Two `WebTransportProtocol`s joined in memory: the real protocol stack with no sockets.

aioquic's own tests pair two connections and pass datagrams between them; this does the
same through asyncio, so a test (or the testing kit) can drive a server's routes,
middleware and handler actors exactly as a network client would, minus the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from ._protocol import OnRequest, WebTransportProtocol
from .endpoint import quic_configuration
from .limits import ConnectionLimits
from .session import Session

__all__ = ["connect_in_memory"]

_CLIENT_ADDR = ("127.0.0.1", 50000)
_SERVER_ADDR = ("127.0.0.1", 4433)


class _MemoryTransport(asyncio.DatagramTransport):
    """Delivers each datagram to the peer protocol on the next loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, local_addr: tuple[str, int]) -> None:
        super().__init__()
        self._loop = loop
        self._local_addr = local_addr
        self.peer: WebTransportProtocol | None = None
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        peer = self.peer
        if not self._closing and peer is not None:
            self._loop.call_soon(_deliver, peer, bytes(data), self._local_addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._local_addr if name == "sockname" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True


def _deliver(peer: WebTransportProtocol, data: bytes, addr: tuple[str, int]) -> None:
    if not peer.is_closed:
        peer.datagram_received(data, addr)


async def connect_in_memory(
    server_configuration: QuicConfiguration,
    on_request: OnRequest,
    path: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    session_options: dict[str, Any] | None = None,
    limits: ConnectionLimits | None = None,
    timeout: float = 10.0,
) -> Session:
    """Open a client session to `on_request` through an in-memory QUIC connection.

    The returned client session behaves like one from `connect()`: `aclose()` closes
    the session and its connection, `abort()` drops the connection without a capsule.
    """
    loop = asyncio.get_running_loop()
    client_quic = QuicConnection(
        configuration=quic_configuration(is_client=True, server_name="localhost", verify_mode=0)
    )
    server_quic = QuicConnection(
        configuration=server_configuration,
        original_destination_connection_id=client_quic.original_destination_connection_id,
    )
    client = WebTransportProtocol(client_quic, session_options=session_options)
    server = WebTransportProtocol(
        server_quic,
        on_request=on_request,
        session_options=session_options,
        limits=limits or ConnectionLimits(),
    )
    client_transport = _MemoryTransport(loop, _CLIENT_ADDR)
    server_transport = _MemoryTransport(loop, _SERVER_ADDR)
    client_transport.peer, server_transport.peer = server, client
    client.connection_made(client_transport)
    server.connection_made(server_transport)

    async def release(abrupt: bool) -> None:
        if not abrupt:
            await client.wait_delivered([session.session_id], 1.0)
        client.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(client.wait_closed(), 1.0)
        client_transport.close()
        server.close()

    try:
        async with asyncio.timeout(timeout):
            client.connect(_SERVER_ADDR)
            await client.wait_connected()
            session = await client.open_session(
                "localhost", path, list(headers or ()), "webtransport"
            )
    except BaseException:
        client.close()
        server.close()
        raise
    session._release = release
    return session
