"""The echo example, end to end over real QUIC on loopback."""

from __future__ import annotations

import asyncio

import pytest

from aiowt import Server
from aiowt.transport import DatagramTooLarge
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded


def echo_routes(server: Server) -> None:
    server.route("/echo", Echo)


async def test_datagram_echo(make_server: ServerFactory, client: ClientFactory) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    async with bounded():
        for payload in (b"", b"x", b"hello" * 100):
            session.send_datagram(payload)
            assert await session.receive_datagram() == payload


async def test_bidirectional_stream_echo_finishes_with_client(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    payload = bytes(range(256)) * 400  # 100 KiB, many packets
    stream = session.open_stream()
    stream.write(payload[:5000])
    stream.write(payload[5000:], end_stream=True)
    async with bounded():
        assert await stream.read_all() == payload


async def test_messages_on_a_stream_come_back_as_the_same_objects(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    stream = session.open_stream()
    sent = [{"type": "say", "text": "hi"}, [1, 2.5, None, True], "é" * 10, b"\x00\xff", 2**40]
    async with bounded():
        for message in sent:
            stream.send_message(message)
            assert await stream.receive_message() == message


async def test_unidirectional_stream_echo(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    outbound = session.open_stream(unidirectional=True)
    outbound.write(b"one way", end_stream=True)
    async with bounded():
        reply = await session.accept_stream()
        assert reply.unidirectional
        assert await reply.read_all() == b"one way"


async def test_largest_datagram_arrives_and_a_larger_one_raises(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    limit = session.max_datagram_size
    assert limit > 1000
    with pytest.raises(DatagramTooLarge):
        session.send_datagram(b"x" * (limit + 1))
    session.send_datagram(b"y" * limit)
    session.send_datagram(b"after")
    async with bounded():
        # aioquic would keep an oversized datagram at the head of its queue forever;
        # the later small one arriving proves nothing is stuck.
        assert await session.receive_datagram() == b"y" * limit
        assert await session.receive_datagram() == b"after"


@pytest.mark.quic
async def test_many_streams_leave_no_http3_state_behind(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    async with bounded(20):
        for index in range(100):
            stream = session.open_stream()
            stream.write(str(index).encode(), end_stream=True)
            assert await stream.read_all() == str(index).encode()
    (connection,) = server.listener.connections
    # Control, encoder, decoder and the CONNECT stream may remain; no data streams.
    assert len(connection.connection.engine._h3._stream) <= 8  # type: ignore[attr-defined]
    assert len(connection.connection._streams) == 0


async def test_stream_echo_preserves_any_chunking(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    patterns = [
        [b""],
        [b"a"],
        [b"", b"b", b""],
        [b"x" * 1, b"y" * 1500, b"z" * 3000],
        [b"q" * 70000],
    ]
    async with bounded(10):
        for chunks in patterns:
            stream = session.open_stream()
            for chunk in chunks:
                stream.write(chunk)
            stream.finish()
            assert await stream.read_all() == b"".join(chunks)


@pytest.mark.quic
async def test_connections_let_go_of_the_socket_when_the_listener_closes(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    await client(server, "/echo")
    (connection,) = server.listener.connections
    await server.shutdown()
    for _ in range(100):  # the transport reports its loss on a later loop iteration
        if connection._transport is None:
            break
        await asyncio.sleep(0)
    assert connection._transport is None  # nothing is sent on a closed socket


async def test_a_stream_the_client_stops_reading_does_not_end_the_session(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(echo_routes)
    session = await client(server, "/echo")
    stream = session.open_stream()
    stream.write(b"first")
    async with bounded():
        assert await stream.read(5) == b"first"
    stream.stop(0)  # the client reads no more of it: the echo must not write to it
    stream.write(b"second", end_stream=True)
    session.send_datagram(b"alive?")
    async with bounded():
        assert await session.receive_datagram() == b"alive?"
    assert not session.closed
