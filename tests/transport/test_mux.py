"""The WebSocket session framing, sans I/O: two `MuxConnection`s wired by hand.

No sockets: each side's frames go into a list the test delivers when it chooses, so
ordering, credit and fairness are exact. The same behaviour over real TCP is in
tests/e2e/test_websocket.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiowt.transport import CloseCode, StreamErrorCode
from aiowt.transport.events import SessionClosed, StreamDataReceived, StreamReset
from aiowt.transport.mux import (
    MAX_CHUNK,
    MAX_DATAGRAM,
    STREAM_WINDOW,
    FrameType,
    MuxConnection,
    MuxLimits,
    decode_frame,
    encode_frame,
)
from aiowt.transport.request import ConnectRequest
from aiowt.transport.session import Session

REQUEST = ConnectRequest("GET", "http", "h", "/p", "", "websocket", (), ("127.0.0.1", 1))


class Side:
    """One end: its mux, its session, and the frames it wrote, not yet delivered."""

    def __init__(self, is_client: bool, limits: MuxLimits | None = None) -> None:
        self.out: list[bytes] = []
        self.mux = MuxConnection(self.out.append, is_client=is_client, limits=limits)
        self.session: Session = self.mux.start_session(REQUEST)
        self.ended: list[object] = []
        self.mux.on_session_end = self.ended.append

    def frames(self) -> Iterator[tuple[int, int, bytes]]:
        return (decode_frame(frame) for frame in self.out)


def deliver(source: Side, target: Side) -> int:
    """Hand every frame `source` wrote to `target`; how many there were."""
    frames, source.out[:] = list(source.out), []
    for frame in frames:
        target.mux.receive_frame(frame)
    return len(frames)


def settle(a: Side, b: Side) -> None:
    while deliver(a, b) + deliver(b, a):
        pass


@pytest.fixture
def pair() -> tuple[Side, Side]:
    return Side(is_client=True), Side(is_client=False)


async def test_stream_bytes_and_end_arrive_in_order(pair: tuple[Side, Side]) -> None:
    client, server = pair
    stream = client.session.open_stream()
    stream.write(b"hello ")
    stream.write(b"world", end_stream=True)
    settle(client, server)
    peer = await asyncio.wait_for(server.session.accept_stream(), 1)
    assert (peer.stream_id, peer.unidirectional) == (0, False)
    assert await asyncio.wait_for(peer.read_all(), 1) == b"hello world"


async def test_stream_ids_follow_quic_numbering(pair: tuple[Side, Side]) -> None:
    client, server = pair
    ids = [client.session.open_stream().stream_id for _ in range(2)]
    ids += [client.session.open_stream(unidirectional=True).stream_id]
    ids += [server.session.open_stream().stream_id]
    ids += [server.session.open_stream(unidirectional=True).stream_id]
    assert ids == [0, 4, 2, 1, 3]


async def test_a_large_write_leaves_in_chunks_within_the_peers_credit(
    pair: tuple[Side, Side],
) -> None:
    client, server = pair
    stream = client.session.open_stream()
    stream.write(b"x" * (STREAM_WINDOW * 2))
    sent = [len(payload) for kind, _, payload in client.frames() if kind == FrameType.STREAM]
    assert max(sent) == MAX_CHUNK
    assert sum(sent) == STREAM_WINDOW  # the rest waits for credit
    assert client.mux.send_buffer_size(stream) == STREAM_WINDOW
    settle(client, server)
    assert client.mux.send_buffer_size(stream) == 0
    assert server.session.streams[0].buffered == STREAM_WINDOW * 2


async def test_a_small_stream_is_not_held_up_behind_a_large_one(pair: tuple[Side, Side]) -> None:
    client, _ = pair
    client.mux.pause_writing()  # the socket is full: both writes queue
    big = client.session.open_stream()
    big.write(b"b" * (MAX_CHUNK * 8))
    small = client.session.open_stream()
    small.write(b"s", end_stream=True)
    client.mux.resume_writing()
    order = [ident for kind, ident, _ in client.frames() if kind != FrameType.CREDIT]
    # Round robin: the small stream's only frame goes second, not after eight chunks.
    assert order[:2] == [big.stream_id, small.stream_id]


async def test_a_peer_sending_past_its_credit_is_a_protocol_error() -> None:
    server = Side(is_client=False)
    server.mux.receive_frame(encode_frame(FrameType.STREAM, 0, b"first"))
    # Credit is granted as bytes reach the session; a window the peer has used up is
    # what a peer ignoring CREDIT would meet, so the test sets one.
    server.mux._receiving[0].limit = 10
    server.mux.receive_frame(encode_frame(FrameType.STREAM, 0, b"y" * 6))
    info = server.session.close_info
    assert info is not None
    assert info.code == CloseCode.PROTOCOL_ERROR
    assert "credit" in info.reason


async def test_credit_is_granted_as_bytes_arrive(pair: tuple[Side, Side]) -> None:
    client, server = pair
    stream = client.session.open_stream()
    stream.write(b"c" * STREAM_WINDOW)
    deliver(client, server)
    credits = [payload for kind, _, payload in server.frames() if kind == FrameType.CREDIT]
    assert credits
    assert sum(int.from_bytes(p, "big") for p in credits) >= STREAM_WINDOW // 2


async def test_datagrams_drop_and_count_when_the_socket_is_full(pair: tuple[Side, Side]) -> None:
    client, server = pair
    assert client.session.send_datagram(b"one")
    client.mux.pause_writing()
    assert not client.session.send_datagram(b"two")
    client.mux.resume_writing()
    client.mux.buffered = client.mux.limits.send_buffer_bound + 1
    assert not client.session.send_datagram(b"three")
    assert client.session.datagrams_dropped_out == 2
    settle(client, server)
    assert await asyncio.wait_for(server.session.receive_datagram(), 1) == b"one"
    assert client.session.max_datagram_size == MAX_DATAGRAM


async def test_close_code_and_reason_arrive_one_to_one(pair: tuple[Side, Side]) -> None:
    client, server = pair
    client.session.close(0xDEADBEEF, "bye ✓")
    settle(client, server)
    assert server.session.close_info is not None
    assert (server.session.close_info.code, server.session.close_info.reason) == (
        0xDEADBEEF,
        "bye ✓",
    )
    assert server.session.close_info.by_peer
    assert client.ended
    assert server.ended


async def test_stop_sending_is_answered_with_a_reset(pair: tuple[Side, Side]) -> None:
    client, server = pair
    stream = client.session.open_stream()
    stream.write(b"a")
    settle(client, server)
    peer = await asyncio.wait_for(server.session.accept_stream(), 1)
    peer.stop(0x42)
    deliver(server, client)
    assert not stream.writable
    resets = [(i, p) for kind, i, p in client.frames() if kind == FrameType.RESET]
    assert resets == [(stream.stream_id, (0x42).to_bytes(4, "big"))]


async def test_a_reset_reaches_the_reader_with_its_code(pair: tuple[Side, Side]) -> None:
    client, server = pair
    stream = client.session.open_stream()
    stream.write(b"partial")
    settle(client, server)
    seen: list[object] = []
    server.session.attach(seen.append)
    stream.reset(0x77)
    settle(client, server)
    assert [type(e) for e in seen] == [type(seen[0]), StreamDataReceived, StreamReset]
    reset = seen[-1]
    assert isinstance(reset, StreamReset)
    assert reset.code == 0x77


async def test_streams_past_the_limit_are_refused_not_fatal() -> None:
    client, server = Side(is_client=True), Side(is_client=False, limits=MuxLimits(max_streams=2))
    streams = [client.session.open_stream(unidirectional=True) for _ in range(3)]
    for stream in streams:
        stream.write(b"x")
    deliver(client, server)
    assert sorted(server.session.streams) == [2, 6]
    assert not server.session.closed
    stops = [(i, p) for kind, i, p in server.frames() if kind == FrameType.STOP]
    assert stops == [(10, int(StreamErrorCode.REFUSED).to_bytes(4, "big"))]
    deliver(server, client)
    assert not streams[2].writable
    assert streams[0].writable


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x01\x00", "shorter than its header"),
        (bytes([0x7F, 0, 0, 0, 0]), "unknown frame type"),
        (encode_frame(FrameType.RESET, 0, b"\x01"), "4-byte code"),
        (encode_frame(FrameType.DATAGRAM, 0, b"d" * (MAX_DATAGRAM + 1)), "exceeds"),
        (encode_frame(FrameType.STREAM, 3, b"server's uni stream"), "only this side"),
    ],
)
async def test_malformed_frames_close_the_session_with_protocol_error(
    frame: bytes, reason: str
) -> None:
    server = Side(is_client=False)
    server.session.open_stream(unidirectional=True)  # id 3: the server's to send on
    server.mux.receive_frame(frame)
    info = server.session.close_info
    assert info is not None
    assert info.code == CloseCode.PROTOCOL_ERROR
    assert reason in info.reason
    kinds = [kind for kind, _, _ in server.frames()]
    assert kinds[-1] == FrameType.CLOSE


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_no_sequence_of_messages_raises_out_of_the_mux(messages: list[bytes]) -> None:
    async def run() -> None:
        server = Side(is_client=False)
        seen: list[object] = []
        server.session.attach(seen.append)
        for message in messages:
            server.mux.receive_frame(message)
        info = server.session.close_info
        # Either the peer closed (a CLOSE frame) or we did, over a broken rule.
        assert info is None or info.by_peer or info.code == CloseCode.PROTOCOL_ERROR
        if info is not None:
            assert isinstance(seen[-1], SessionClosed)

    asyncio.run(run())
