"""Requests that are not WebTransport sessions get a clear 4xx, and the server keeps serving."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

from aiowt import Server
from aiowt.transport import ConnectionLimits, UsageError
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded


class RawH3(QuicConnectionProtocol):
    """A bare HTTP/3 client that sends arbitrary request headers."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.responses: dict[int, asyncio.Future[dict[bytes, bytes]]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                waiter = self.responses.get(h3_event.stream_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(dict(h3_event.headers))

    async def request(self, headers: list[tuple[bytes, bytes]], end: bool) -> dict[bytes, bytes]:
        stream_id = self._quic.get_next_available_stream_id()
        self.responses[stream_id] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(stream_id, headers, end_stream=end)
        self.transmit()
        return await self.responses[stream_id]


@asynccontextmanager
async def raw_client(server: Server) -> AsyncIterator[RawH3]:
    """A bare HTTP/3 connection to `server`, not verifying its certificate."""
    host, port = server.address
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=65536,
    )
    async with quic_connect(host, port, configuration=configuration, create_protocol=RawH3) as raw:
        assert isinstance(raw, RawH3)
        yield raw


def base(server: Server, path: bytes = b"/echo") -> list[tuple[bytes, bytes]]:
    host, port = server.address
    return [
        (b":method", b"CONNECT"),
        (b":scheme", b"https"),
        (b":authority", f"{host}:{port}".encode()),
        (b":path", path),
        (b":protocol", b"webtransport"),
    ]


def without(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    return [header for header in headers if header[0] != name]


CASES = {
    "GET is not served": (
        lambda h: [(b":method", b"GET"), *without(without(h, b":method"), b":protocol")],
        True,
        b"405",
    ),
    "CONNECT without :protocol": (lambda h: without(h, b":protocol"), False, b"400"),
    "unknown :protocol": (
        lambda h: [*without(h, b":protocol"), (b":protocol", b"websocket")],
        False,
        b"400",
    ),
    "non-UTF-8 header value": (lambda h: [*h, (b"x-bad", b"\xff\xfe")], False, b"400"),
    "header block over 16 KiB": (lambda h: [*h, (b"x-big", b"a" * 17000)], False, b"431"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_request_gets_a_clear_status(
    make_server: ServerFactory, client: ClientFactory, case: str
) -> None:
    build, end_stream, status = CASES[case]
    server = await make_server(lambda s: s.route("/echo", Echo))
    async with bounded(10), raw_client(server) as raw:
        if server.engine == "qh3" and case == "non-UTF-8 header value":
            # qh3's QPACK decoder takes values as UTF-8: the peer's connection is closed
            # (QPACK_DECOMPRESSION_FAILED) before any request reaches aiowt.
            request = asyncio.ensure_future(raw.request(build(base(server)), end_stream))
            await raw.wait_closed()
            request.cancel()
            response = {b":status": status, b"aiowt-reason": b"closed by qh3"}
        else:
            response = await raw.request(build(base(server)), end_stream)
    assert response[b":status"] == status
    assert response.get(b"aiowt-reason")
    # The server keeps serving a good client.
    session = await client(server, "/echo")
    session.send_datagram(b"ok")
    async with bounded():
        assert await session.receive_datagram() == b"ok"


async def test_a_peer_that_never_sends_connect_is_disconnected(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        lambda s: s.route("/echo", Echo), connection_limits=ConnectionLimits(idle_timeout=0.2)
    )
    async with bounded(10), raw_client(server) as raw:
        await raw.wait_closed()  # the server closed the silent connection
        # The server lets go of it once its own closing period is over, a little later.
        for connection in list(server.listener.connections):
            await connection.wait_closed()
    assert not server.listener.connections


async def test_too_many_sessions_on_one_connection_get_429(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        lambda s: s.route("/echo", Echo),
        connection_limits=ConnectionLimits(max_sessions_per_connection=2),
    )
    async with bounded(10), raw_client(server) as raw:
        statuses = [(await raw.request(base(server), False))[b":status"] for _ in range(3)]
        settings = raw.h3.received_settings
    assert statuses == [b"200", b"200", b"429"]
    # The limit is advertised as WT_MAX_SESSIONS (both drafts' codepoints).
    assert settings is not None
    assert settings[0xC671706A] == settings[0x14E9CD29] == 2


def test_connection_limits_refuse_nonsense() -> None:
    bad_options = (
        {"max_sessions_per_connection": 0},
        {"idle_timeout": -1.0},
        {"max_header_bytes": True},
    )
    for bad in bad_options:
        with pytest.raises(UsageError, match=next(iter(bad))):
            ConnectionLimits(**bad)  # type: ignore[arg-type]


def test_the_old_name_of_the_per_connection_session_limit_still_works_and_warns() -> None:
    with pytest.warns(DeprecationWarning, match="max_sessions_per_connection"):
        limits = ConnectionLimits(max_sessions=3)
    assert limits == ConnectionLimits(max_sessions_per_connection=3)
