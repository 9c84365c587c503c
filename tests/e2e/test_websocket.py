"""The WebSocket transport end to end: real TCP on loopback, real TLS, the same handlers.

The whole end-to-end suite also runs over WebSocket (`AIOWT_TRANSPORT=websocket`, in
`make test`); these tests are about what is WebSocket's own: both transports at once on
one server, the HTTP/1.1 upgrade's statuses, one limit over both, TLS, and what a bad
or rude peer does to a socket that multiplexes streams.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect

from aiowt import Server
from aiowt.actors import ask
from aiowt.actors.metrics import TakeSnapshot
from aiowt.middleware.auth import BearerAuth, StaticTokens
from aiowt.middleware.limits import MaxSessions
from aiowt.middleware.logging import COMMON_LOG_FORMAT, AccessLog, JsonAccessLog
from aiowt.middleware.metrics import Metrics
from aiowt.transport import (
    CloseCode,
    ConnectionLimits,
    HandshakeError,
    Reconnecting,
    Session,
    UsageError,
    connect,
)
from aiowt.transport.mux import MAX_FRAME, FrameType, encode_frame
from aiowt.transport.tls import SelfSignedCertificate
from aiowt.transport.websocket import connect_websocket
from examples.echo import Echo
from tests.conftest import ServerFactory, Unwound, bounded

pytestmark = pytest.mark.timeout(60)


def echo_routes(server: Server) -> None:
    server.route("/echo", Echo)


async def ws_client(
    server: Server, path: str, certificate: SelfSignedCertificate, **options: Any
) -> Session:
    host, port = server.websocket_address
    options.setdefault("cert_hash", certificate.sha256)
    return await asyncio.wait_for(connect_websocket(f"wss://{host}:{port}{path}", **options), 10)


async def test_one_server_serves_the_same_route_over_both_transports(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    host, port = server.address
    over_quic = await asyncio.wait_for(
        connect(f"https://{host}:{port}/echo", cert_hash=certificate.sha256), 10
    )
    ws_host, ws_port = server.websocket_address
    # connect() takes either: a wss:// (or ws://) URL goes over WebSocket.
    over_ws = await asyncio.wait_for(
        connect(f"wss://{ws_host}:{ws_port}/echo", cert_hash=certificate.sha256), 10
    )
    async with bounded(10):
        for session in (over_quic, over_ws):
            stream = session.open_stream()
            stream.send_message({"via": session.request.protocol})
            assert await stream.receive_message() == {"via": session.request.protocol}
            session.send_datagram_message([1, 2, 3])
            assert await session.receive_datagram_message() == [1, 2, 3]
    assert {s.request.protocol for s in server.sessions} == {"webtransport", "websocket"}
    await over_quic.aclose()
    await over_ws.aclose()


async def test_metrics_and_access_logs_carry_the_transport(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    lines: list[str] = []
    apache: list[str] = []
    unwound = Unwound()
    server = await make_server(
        lambda s: s.use(
            unwound,
            Metrics(),
            JsonAccessLog(sink=lines.append),
            AccessLog(COMMON_LOG_FORMAT, sink=apache.append),
        ).route("/echo", Echo),
        websocket=True,
        websocket_port=0,
    )
    host, port = server.address
    over_quic = await asyncio.wait_for(
        connect(f"https://{host}:{port}/echo", cert_hash=certificate.sha256), 10
    )
    over_ws = await ws_client(server, "/echo", certificate)
    for session in (over_quic, over_ws):
        await session.aclose()
    await unwound.wait(2)
    assert sorted(json.loads(line)["transport"] for line in lines) == ["websocket", "webtransport"]
    # The request line says what was asked: an extended CONNECT, or an upgrade's GET.
    assert sorted(line.split('"')[1] for line in apache) == [
        "CONNECT /echo HTTP/3",
        "GET /echo HTTP/1.1",
    ]
    snapshot = await ask(server.services.metrics, TakeSnapshot())
    for transport in ("webtransport", "websocket"):
        labels = {"route": "/echo", "transport": transport}
        assert snapshot.value("aiowt_sessions_accepted_total", labels) == 1
        assert snapshot.value("aiowt_handshakes_total", {**labels, "status": "200"}) == 1


async def test_a_large_stream_round_trips_over_the_socket(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    session = await ws_client(server, "/echo", certificate)
    payload = bytes(range(256)) * 12_000  # 3 MB: many chunks, many credits
    stream = session.open_stream()
    stream.write(payload, end_stream=True)
    async with bounded(20):
        assert await stream.read_all() == payload
    await session.aclose()


async def test_refusals_are_http_statuses_with_reason_and_retry_after(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    def routes(server: Server) -> None:
        server.route("/echo", Echo)
        server.route("/locked", Echo, BearerAuth(StaticTokens({"sesame": "ada"})))
        server.route("/one", Echo, MaxSessions(1, retry_after=7))

    server = await make_server(routes, websocket=True, websocket_port=0)
    with pytest.raises(HandshakeError) as missing:
        await ws_client(server, "/nowhere", certificate)
    assert (missing.value.status, missing.value.reason) == (404, "no route for this path")
    with pytest.raises(HandshakeError) as locked:
        await ws_client(server, "/locked", certificate)
    assert locked.value.status == 401
    assert dict(locked.value.headers).get("www-authenticate", "").startswith("Bearer")
    holder = await ws_client(server, "/one", certificate)
    with pytest.raises(HandshakeError) as full:
        await ws_client(server, "/one", certificate)
    assert (full.value.status, full.value.reason) == (503, "server at capacity (1 sessions)")
    assert dict(full.value.headers)["retry-after"] == "7"
    opened = await ws_client(
        server, "/locked", certificate, headers=[("authorization", "Bearer sesame")]
    )
    await opened.aclose()
    await holder.aclose()


async def test_max_sessions_counts_both_transports_exactly_under_a_burst(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    limit = 7
    server = await make_server(
        lambda s: s.route("/echo", Echo, MaxSessions(limit)), websocket=True, websocket_port=0
    )
    host, port = server.address

    async def over_quic() -> Session:
        opening = connect(f"https://{host}:{port}/echo", cert_hash=certificate.sha256)
        return await asyncio.wait_for(opening, 15)

    attempts = [over_quic() for _ in range(12)]
    attempts += [ws_client(server, "/echo", certificate) for _ in range(12)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Session)]
    refused = [r for r in results if isinstance(r, HandshakeError)]
    assert len(admitted) == limit, results
    assert len(refused) == 24 - limit
    assert {r.status for r in refused} == {503}
    assert server.live_sessions == limit
    for session in admitted:
        await session.aclose()


async def test_the_certificate_is_checked_and_plain_ws_needs_no_tls(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    with pytest.raises(HandshakeError, match=r"not trusted .*cert_hash="):
        await ws_client(server, "/echo", certificate, cert_hash=None)
    # A TLS handshake that failed left nothing behind on the server.
    assert not server.websocket_listener.connections
    with pytest.raises(HandshakeError, match=r"does not match the pinned SHA-256"):
        await ws_client(server, "/echo", certificate, cert_hash=b"\0" * 32)
    plain = await make_server(echo_routes, websocket=True, websocket_port=0, websocket_tls=False)
    host, port = plain.websocket_address
    session = await asyncio.wait_for(connect_websocket(f"ws://{host}:{port}/echo"), 10)
    assert session.request.scheme == "http"
    await session.aclose()
    with pytest.raises(UsageError, match="cannot be sent"):
        await connect_websocket(f"ws://{host}:{port}/echo", headers=[("x-bad", "a\x01b")])


async def test_closes_carry_code_and_reason_both_ways(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    ends: asyncio.Queue[Any] = asyncio.Queue()
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    server.on_disconnect.append(lambda ctx: ends.put_nowait(ctx.close_info))
    session = await ws_client(server, "/echo", certificate)
    await session.aclose(4321, "done here")
    async with bounded(10):
        info = await ends.get()
    assert (info.code, info.reason, info.by_peer) == (4321, "done here", True)

    second = await ws_client(server, "/echo", certificate)
    await server.shutdown(timeout=5)
    async with bounded(10):
        closed = await second.wait_closed()
    assert (closed.code, closed.reason) == (CloseCode.GOING_AWAY, "server shutting down")


async def test_an_abrupt_disconnect_ends_only_that_session(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    ends: asyncio.Queue[Any] = asyncio.Queue()
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    server.on_disconnect.append(lambda ctx: ends.put_nowait(ctx.close_info))
    bystander = await ws_client(server, "/echo", certificate)
    rude = await ws_client(server, "/echo", certificate)
    await rude.abort()
    async with bounded(10):
        info = await ends.get()
    assert info.code == CloseCode.ABORTED
    stream = bystander.open_stream()
    stream.send_message("still here")
    async with bounded(10):
        assert await stream.receive_message() == "still here"
    await bystander.aclose()


async def raw_session(server: Server) -> Any:
    host, port = server.websocket_address
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return await raw_connect(f"wss://{host}:{port}/echo", ssl=context, max_size=None)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"x" * (MAX_FRAME + 1), CloseCode.MESSAGE_TOO_LARGE),
        ("text is not a frame", CloseCode.PROTOCOL_ERROR),
        (bytes([0x7F, 0, 0, 0, 0]), CloseCode.PROTOCOL_ERROR),
        (encode_frame(FrameType.RESET, 0, b"\x01"), CloseCode.PROTOCOL_ERROR),
    ],
    ids=["oversized", "text", "unknown-type", "short-code"],
)
async def test_a_bad_frame_closes_its_session_with_a_typed_code_and_spares_others(
    make_server: ServerFactory,
    certificate: SelfSignedCertificate,
    message: bytes | str,
    code: CloseCode,
) -> None:
    ends: asyncio.Queue[Any] = asyncio.Queue()
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    server.on_disconnect.append(lambda ctx: ends.put_nowait(ctx.close_info))
    bystander = await ws_client(server, "/echo", certificate)
    async with bounded(10), await raw_session(server) as raw:
        await raw.send(message)
        info = await ends.get()
        assert info.code == code
        assert not info.by_peer
        # The server ends the socket itself (over TLS, which cannot half-close), not
        # after the closing WebSocket's 5 s timeout.
        await asyncio.wait_for(raw.wait_closed(), 2.5)
    stream = bystander.open_stream()
    stream.send_message("unharmed")
    async with bounded(10):
        assert await stream.receive_message() == "unharmed"
    await bystander.aclose()


async def test_a_flooding_stream_does_not_starve_another_on_the_same_socket(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    session = await ws_client(server, "/echo", certificate)
    flood_size = 16 * 1024 * 1024
    flood = session.open_stream()
    echoed = 0

    async def read_flood() -> None:
        nonlocal echoed
        while chunk := await flood.read():
            echoed += len(chunk)

    reader = asyncio.create_task(read_flood())
    flood.write(b"f" * flood_size, end_stream=True)
    small = session.open_stream()
    async with bounded(30):
        for index in range(20):
            small.send_message(index)
            assert await small.receive_message() == index
        # Twenty round trips on the small stream finished while the flood was still
        # under way: its frames went between the flood's, not after them.
        assert echoed < flood_size
        await reader
    assert echoed == flood_size
    await session.aclose()


async def test_a_socket_that_never_sends_its_upgrade_is_dropped(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        echo_routes,
        websocket=True,
        websocket_port=0,
        websocket_tls=False,
        connection_limits=ConnectionLimits(idle_timeout=0.5),
    )
    host, port = server.websocket_address
    reader, writer = await asyncio.open_connection(host, port)
    async with bounded(5):
        assert await reader.read() == b""  # the server hung up
    writer.close()
    assert server.live_sessions == 0


async def test_a_peer_that_goes_silent_is_pinged_then_dropped(
    make_server: ServerFactory,
) -> None:
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    ends: asyncio.Queue[Any] = asyncio.Queue()
    server = await make_server(
        echo_routes, websocket=True, websocket_port=0, websocket_tls=False, idle_timeout=0.6
    )
    server.on_disconnect.append(lambda ctx: ends.put_nowait(ctx.close_info))
    host, port = server.websocket_address
    # A client that upgrades, then never answers again: not even the server's pings
    # (the sans-I/O protocol would pong only if it were fed what arrives).
    protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}/echo"))
    protocol.send_request(protocol.connect())
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"".join(protocol.data_to_send()))
    received = b""
    async with bounded(5):
        while b"\r\n\r\n" not in received:
            received += await reader.read(4096)
        assert received.startswith(b"HTTP/1.1 101")
        info = await ends.get()
        rest = await reader.read()  # until the server hangs up
    assert (info.code, info.reason) == (CloseCode.IDLE_TIMEOUT, "nothing heard for 0.6 s")
    assert b"\x89\x00" in received + rest  # an empty ping (FIN, opcode 9) went out first
    writer.close()


async def test_a_quiet_session_whose_peer_answers_pings_stays(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        echo_routes, websocket=True, websocket_port=0, websocket_tls=False, idle_timeout=0.6
    )
    host, port = server.websocket_address
    session = await asyncio.wait_for(connect(f"ws://{host}:{port}/echo", idle_timeout=0.6), 10)
    # Nothing from the application for five idle timeouts: the pings keep it.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(session.wait_closed(), 3.0)
    session.send_datagram(b"still")
    async with bounded():
        assert await session.receive_datagram() == b"still"
    await session.aclose()


async def test_reconnecting_over_websocket_comes_back_after_a_server_close(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    server = await make_server(echo_routes, websocket=True, websocket_port=0)
    host, port = server.websocket_address
    opened: asyncio.Queue[Session] = asyncio.Queue()

    async def on_session(session: Session) -> None:
        opened.put_nowait(session)

    client = Reconnecting(
        f"wss://{host}:{port}/echo",
        cert_hash=certificate.sha256,
        on_session=on_session,
        initial_delay=0.05,
        max_delay=0.2,
    )
    async with client, bounded(20):
        one = await opened.get()
        assert one.request.transport == "websocket"
        server.sessions[0].close(CloseCode.GOING_AWAY, "moving")
        two = await opened.get()
        assert two is not one
        assert two.request.transport == "websocket"
        stream = two.open_stream()
        stream.send_message("back")
        assert await stream.receive_message() == "back"
    assert client.sessions_opened == 2
