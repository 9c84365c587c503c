"""Per-session limits and counters at the transport, end to end: TokenBucket, DepthGuard,
Bandwidth."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiowt.actors import Handler, ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.middleware.limits import DepthGuard, TokenBucket
from aiowt.middleware.stats import BANDWIDTH, Bandwidth
from aiowt.transport import CloseCode, StreamClosedError, StreamErrorCode
from aiowt.transport.framing import encode_message
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded
from tests.e2e.test_limits_sessions import Ends, Stop, stop

__all__ = ["stop"]  # the autouse fixture, re-used here


class Counting(Handler):
    received: asyncio.Queue[bytes]

    async def on_datagram(self, data: bytes) -> None:
        self.received.put_nowait(data)


async def test_token_bucket_drops_datagrams_past_the_burst_and_counts_them(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    metrics = stop(MetricsCollector.start())
    Counting.received = asyncio.Queue()
    ends = Ends()
    # A refill so slow that no token comes back during the test: exactly the burst passes.
    bucket = TokenBucket(0.001, 3, metrics=metrics)
    server = await make_server(lambda s: s.use(ends, bucket).route("/count", Counting))
    session = await client(server, "/count")
    for n in range(10):
        session.send_datagram(b"%d" % n)
    async with bounded():
        assert [await Counting.received.get() for _ in range(3)] == [b"0", b"1", b"2"]
    await session.aclose()  # reliable, after the datagrams: every one was metered before
    await ends.next()
    snapshot = await ask(metrics, TakeSnapshot())
    assert (
        snapshot.value(names.TOKEN_BUCKET_EXCESS.name, {"kind": "datagram", "action": "drop"}) == 7
    )
    assert Counting.received.empty()


async def test_token_bucket_close_policy_closes_with_rate_limited(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(
        lambda s: s.use(TokenBucket(0.001, 2, on_excess="close")).route("/echo", Echo)
    )
    session = await client(server, "/echo")
    for _ in range(5):
        session.send_datagram(b"flood")
    async with bounded():
        info = await session.wait_closed()
    assert (info.code, info.reason) == (CloseCode.RATE_LIMITED, "message rate limit exceeded")


async def test_token_bucket_meters_stream_chunks_and_refuses_the_stream_past_it(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(lambda s: s.use(TokenBucket(0.001, 2)).route("/echo", Echo))
    session = await client(server, "/echo")
    stream = session.open_stream()
    async with bounded():
        for chunk in (b"one", b"two"):  # one chunk per round trip: one delivery each
            stream.write(chunk)
            assert await stream.read() == chunk
        stream.write(b"three")
        with pytest.raises(StreamClosedError) as caught:
            await stream.read()
    assert caught.value.code == StreamErrorCode.REFUSED
    assert not session.closed  # drop policy: the stream pays, not the session


async def test_depth_guard_refuses_the_stream_past_the_limit_and_frees_slots(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    metrics = stop(MetricsCollector.start())
    ends = Ends()
    server = await make_server(
        lambda s: s.use(ends).route("/echo", Echo, DepthGuard(2, metrics=metrics))
    )
    session = await client(server, "/echo")
    streams = [session.open_stream() for _ in range(3)]
    for n, stream in enumerate(streams):
        stream.write(b"s%d" % n)
    async with bounded():
        assert await streams[0].read() == b"s0"
        assert await streams[1].read() == b"s1"
        with pytest.raises(StreamClosedError) as caught:
            await streams[2].read()
        assert caught.value.code == StreamErrorCode.REFUSED
        # The two that run still work.
        streams[1].write(b"more")
        assert await streams[1].read() == b"more"
        # Ending one (both directions) frees its slot for a new stream.
        streams[0].write(b"", end_stream=True)
        assert await streams[0].read_all() == b""
        fourth = session.open_stream()
        fourth.write(b"s3")
        assert await fourth.read() == b"s3"
        fifth = session.open_stream()
        fifth.write(b"s4")
        with pytest.raises(StreamClosedError):
            await fifth.read()
    assert not session.closed
    await session.aclose()
    await ends.next()
    snapshot = await ask(metrics, TakeSnapshot())
    assert snapshot.value(names.STREAMS_REFUSED.name, {"middleware": "DepthGuard"}) == 2


class Metered(Echo):
    """Echo, and on b"?" reports what the transport counted so far (read via the context)."""

    async def on_datagram(self, data: bytes) -> None:
        if data == b"?":
            counter = self.ctx.get(BANDWIDTH)
            self.send_datagram_message([counter.bytes_in, counter.bytes_out])
        else:
            await super().on_datagram(data)


async def test_bandwidth_counts_every_payload_byte_at_the_transport(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    bandwidth = stop(Bandwidth())
    ends = Ends()
    server = await make_server(lambda s: s.use(ends, bandwidth).route("/echo", Metered))
    session = await client(server, "/echo")
    payload = bytes(range(256)) * 40  # 10240 bytes on a stream
    async with bounded():
        session.send_datagram(b"x" * 100)
        assert await session.receive_datagram() == b"x" * 100
        stream = session.open_stream()
        stream.write(payload, end_stream=True)
        assert await stream.read_all() == payload
        session.send_datagram(b"?")
        live: Any = await session.receive_datagram_message()
    assert live == [100 + len(payload) + 1, 100 + len(payload)]
    await session.aclose()
    await ends.next()
    counts = await bandwidth.read()
    reply = len(encode_message(live))
    assert counts.bytes_in == 100 + len(payload) + 1
    assert counts.bytes_out == 100 + len(payload) + reply
    assert bandwidth.service.started is not None
    snapshot = await ask(bandwidth.service.started, TakeSnapshot())
    for direction, total in (("in", counts.bytes_in), ("out", counts.bytes_out)):
        labels = {"route": "/echo", "direction": direction}
        kinds = (names.DATAGRAM_BYTES, names.STREAM_BYTES)
        assert sum(snapshot.value(kind.name, labels) for kind in kinds) == total
