"""Slow peers: one that completes QUIC and never sends CONNECT, and ones that stop reading.

- Never sends CONNECT (or lingers after its last session): closed after
  `WebTransportProtocol.idle_connection_timeout`, not before, and nothing of it is left.
  (`tests/e2e/test_bad_requests.py` checks the close; here several at once, the timing,
  and the release.)
- Stops reading: simulated with the lossy relay at 100 % loss toward the client (its
  QUIC stack would otherwise acknowledge, and so take, everything). The server's data
  then stays unacknowledged in the stream's send buffer:
  - a handler pushing through `OutboundChannel` has the session closed with
    `SLOW_CONSUMER` once the buffer passes `send_buffer_high`; a peer that reads the same
    pushes is not (the control);
  - raw `Stream.write` from `on_receive` (fan-out to a handler by `tell`): the same
    bound gives the same close code, and is the peer's fault, not a handler failure
    (fix G);
  - a handler that honours backpressure (`await stream.drain()`) waits, and is released
    by the QUIC idle timeout;
  - datagrams to a deaf peer stay within `max_pending_datagrams`; the rest are dropped
    and counted.
  Afterwards the connection is gone (idle timeout), with its buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pykka
import pytest

from aiowt import Server
from aiowt.actors import Handler
from aiowt.actors.outbound import OutboundChannel
from aiowt.transport import CloseCode, CloseInfo, ConnectionLimits, Session, Stream, connect
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import ServerFactory, bounded
from tests.reliability.support import (
    RawH3,
    UdpRelay,
    connect_headers,
    connections_closed,
    live_objects,
    raw_configuration,
    watching,
)

IDLE_CONNECTION = 0.3
"""`idle_connection_timeout` in these tests (seconds)."""
IDLE_TIMEOUT = 1.0
"""The server's QUIC idle timeout in these tests (seconds)."""
CHUNK = 64 * 1024
HIGH = 1024 * 1024
"""`send_buffer_high` in these tests: small, so the bound is reached quickly."""


# --- never sends CONNECT --------------------------------------------------------------------


async def test_peers_that_never_send_connect_are_released_after_the_bound(
    make_server: ServerFactory,
) -> None:
    from aioquic.asyncio.client import connect as quic_connect

    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(
            lambda s: s.route("/echo", Echo),
            connection_limits=ConnectionLimits(idle_timeout=IDLE_CONNECTION),
        )
        host, port = server.address
        listener = server.listener
        baseline = live_objects()["WebTransportProtocol"]
        async with bounded(10), contextlib.AsyncExitStack() as stack:
            silent = [
                await stack.enter_async_context(
                    quic_connect(
                        host, port, configuration=raw_configuration(), create_protocol=RawH3
                    )
                )
                for _ in range(5)
            ]
            # One more that opens a session, ends it, and then lingers.
            lingering = await stack.enter_async_context(
                quic_connect(host, port, configuration=raw_configuration(), create_protocol=RawH3)
            )
            assert isinstance(lingering, RawH3)
            stream_id = lingering.send_request(connect_headers(f"{host}:{port}"))
            assert (await lingering.verdict(stream_id) or {}).get(b":status") == b"200"
            lingering.h3.send_data(stream_id, b"", end_stream=True)
            lingering.transmit()
            connected = time.monotonic()
            server_side = list(listener.connections)
            assert len(server_side) == 6
            await connections_closed(server_side, 5)
            waited = time.monotonic() - connected
            for peer in [*silent, lingering]:
                await peer.wait_closed()  # each heard the server close it
        # Released at the bound: not before it, and not long after.
        assert IDLE_CONNECTION * 0.9 <= waited <= IDLE_CONNECTION + 2.0, waited
        assert not listener.connections
        assert server.live_sessions == 0
        del silent, lingering, server_side
        assert live_objects()["WebTransportProtocol"] <= baseline
    watch.check()


# --- stops reading ------------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    """Told or asked to a `Feed` handler: send `count` frames of `size` bytes."""

    size: int = CHUNK
    count: int = 1


@dataclass(frozen=True)
class Datagrams:
    count: int


class Feed(Handler):
    """Pushes server-side data when told to (as a room fans out to its members)."""

    refs: ClassVar[asyncio.Queue[pykka.ActorRef[Any]]]
    stops: ClassVar[asyncio.Queue[CloseInfo | None]]
    draining: ClassVar[asyncio.Event]
    peak_buffer: ClassVar[int] = 0
    mode: ClassVar[str] = "outbound"

    async def on_start(self) -> None:
        self.channel = OutboundChannel(self.session)
        self.raw: Stream | None = None
        self.refs.put_nowait(self.actor_ref)

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if message == "drain" and stream is not None:
            # Well-behaved: wait for the peer before each next chunk.
            Feed.draining.set()
            body = b"d" * CHUNK
            for _ in range(4 * HIGH // CHUNK):
                stream.write(body)
                await stream.drain()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Push):
            body = b"p" * message.size
            frame = len(body).to_bytes(4, "big") + body
            for _ in range(message.count):
                if Feed.mode == "outbound":
                    if not self.channel.send_frame(frame):
                        return False
                else:
                    if self.raw is None:
                        self.raw = self.session.open_stream(unidirectional=True)
                    self.raw.write(frame)
            stream = self.channel._stream or self.raw
            if stream is not None:
                Feed.peak_buffer = max(
                    Feed.peak_buffer, self.session._protocol.send_buffer_size(stream)
                )
            return True
        if isinstance(message, Datagrams):
            sent = sum(self.session.send_datagram(b"d" * 100) for _ in range(message.count))
            pending = self.session._protocol.engine.pending_datagrams()
            return sent, self.session.datagrams_dropped_out, pending
        return None

    async def on_stop(self) -> None:
        self.stops.put_nowait(self.close_info)


def _feed_reset(mode: str) -> None:
    Feed.refs, Feed.stops, Feed.draining = asyncio.Queue(), asyncio.Queue(), asyncio.Event()
    Feed.peak_buffer = 0
    Feed.mode = mode


def _configure(server: Server) -> None:
    server.route("/feed", Feed)


async def _through_relay(
    server: Server, certificate: SelfSignedCertificate
) -> tuple[UdpRelay, Session, pykka.ActorRef[Any]]:
    relay = UdpRelay(server.address, seed=8).start()
    host, port = relay.address
    session = await connect(f"https://{host}:{port}/feed", cert_hash=certificate.sha256)
    ref = await Feed.refs.get()
    # The bound under test. `Server` has no option for it (see docs/reliability.md), so
    # it is set on the server's session, as `OutboundChannel(max_buffered=...)` would.
    (await _server_session(server)).send_buffer_high = HIGH
    return relay, session, ref


async def _server_session(server: Server) -> Session:
    (session,) = server.sessions
    return session


async def _push_until_closed(ref: pykka.ActorRef[Any], limit: int) -> int:
    """Push one chunk at a time (each after the last was handled and sent) until the
    handler reports the session closed, or `limit` chunks."""
    for pushed in range(1, limit + 1):
        try:
            if not await ref.ask(Push(), block=False):
                return pushed
        except pykka.ActorDeadError:
            return pushed
    return limit


@pytest.mark.parametrize("reads", [True, False], ids=["reading peer", "deaf peer"])
async def test_outbound_channel_closes_only_a_peer_that_stops_reading(
    make_server: ServerFactory, certificate: SelfSignedCertificate, reads: bool
) -> None:
    _feed_reset("outbound")
    limit = 3 * HIGH // CHUNK
    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(_configure, idle_timeout=IDLE_TIMEOUT)
        relay, session, ref = await _through_relay(server, certificate)
        served = await _server_session(server)
        try:
            async with bounded(30):
                if reads:
                    incoming = asyncio.ensure_future(session.accept_stream())
                    for _ in range(limit):
                        assert await ref.ask(Push(), block=False)
                        stream = await incoming
                        body = await stream.read(4 + CHUNK)
                        while len(body) < 4 + CHUNK:
                            body += await stream.read(4 + CHUNK - len(body))
                    assert not served.closed
                    assert Feed.peak_buffer <= HIGH
                else:
                    relay.loss_to_client = 1.0  # from now on the client hears nothing
                    pushed = await _push_until_closed(ref, limit)
                    info = await Feed.stops.get()
                    assert info is not None
                    assert info.code == CloseCode.SLOW_CONSUMER, info
                    # Closed at the bound: the buffer held at most one chunk more.
                    assert pushed <= HIGH // CHUNK + 2, pushed
                    assert Feed.peak_buffer <= HIGH + CHUNK
                    # The deaf connection is released by the QUIC idle timeout.
                    await connections_closed(list(server.listener.connections), 5 + IDLE_TIMEOUT)
                    await asyncio.wait_for(server.wait_idle(), 10)
                    assert server.live_sessions == 0
        finally:
            await (session.aclose() if reads else session.abort())
            relay.close()
    watch.check()


async def test_a_raw_write_past_the_bound_from_on_receive_closes_as_slow_consumer(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    _feed_reset("raw")
    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(_configure, idle_timeout=IDLE_TIMEOUT)
        relay, session, ref = await _through_relay(server, certificate)
        try:
            async with bounded(30):
                relay.loss_to_client = 1.0
                for _ in range(3 * HIGH // CHUNK):
                    if not ref.is_alive():
                        break
                    ref.tell(Push())  # a fan-out: tell, never ask
                    # Paced: the next push after this one was handled and sent.
                    await asyncio.wait([asyncio.ensure_future(_handled(ref))])
                info = await Feed.stops.get()
            assert info is not None
            assert info.code == CloseCode.SLOW_CONSUMER, info
        finally:
            await session.abort()
            relay.close()
    watch.check()


async def _handled(ref: pykka.ActorRef[Any]) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        await ref.ask(None, block=False)


async def test_a_writer_that_waits_for_a_deaf_peer_is_released_by_the_idle_timeout(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    _feed_reset("outbound")
    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(_configure, idle_timeout=IDLE_TIMEOUT)
        relay, session, _ = await _through_relay(server, certificate)
        try:
            stream = session.open_stream()
            stream.send_message("drain")
            async with bounded(5):
                await Feed.draining.wait()  # the request arrived; now the client goes deaf
            relay.loss_to_client = 1.0
            started = time.monotonic()
            # The client times out (it hears nothing), then the server (it hears nothing).
            async with bounded(3 * IDLE_TIMEOUT + 2):
                info = await Feed.stops.get()
            assert info is not None
            assert info.code == CloseCode.ABORTED, info  # the connection timed out
            assert time.monotonic() - started <= 3 * IDLE_TIMEOUT + 2
            async with bounded(2):
                await server.wait_idle()
        finally:
            await session.abort()
            relay.close()
    watch.check()


async def test_datagrams_to_a_deaf_peer_stay_within_the_pending_bound(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    _feed_reset("outbound")
    bound = ConnectionLimits().max_pending_datagrams
    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(_configure, idle_timeout=IDLE_TIMEOUT)
        relay, session, ref = await _through_relay(server, certificate)
        try:
            relay.loss_to_client = 1.0
            async with bounded(10):
                sent, dropped, pending = await ref.ask(Datagrams(3 * bound), block=False)
            assert pending <= bound
            assert dropped > 0
            assert sent + dropped == 3 * bound
        finally:
            await session.abort()
            relay.close()
    watch.check()
