"""Churn: thousands of real sessions opening and closing concurrently, many of them
abruptly, and afterwards nothing is left.

Sessions run in waves of `CONCURRENCY` over real UDP on 127.0.0.1. Each ends one of four
ways: closed after some traffic, aborted mid-stream (CONNECTION_CLOSE without a close
capsule), its UDP socket dropped without a word (the server only sees silence, bounded
by its QUIC idle timeout), or closed without traffic; a client process holding sessions
is SIGKILLed. The server runs the limits and metrics middleware. Afterwards:

- no live session, no server connection, no task and no actor task beyond those before;
- no handler, session, stream or protocol object reachable (garbage-collected);
- every registry count and rate-limit slot zero, every in-progress gauge zero;
- traced memory within a bound of where it started;
- no error logged, nothing reported to the loop.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import time
import tracemalloc
import weakref
from collections import Counter
from typing import Any, ClassVar

import pytest

from aiowt import Server
from aiowt.actors import Handler, ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.actors.ratelimit import HolderCounts, RateLimitRegistry
from aiowt.actors.sessions import CountSessions, SessionRegistry
from aiowt.middleware.limits import DepthGuard, MaxSessions, RateLimit, RouteRateLimit, TokenBucket
from aiowt.middleware.metrics import Metrics
from aiowt.middleware.stats import ConcurrencyStats
from aiowt.transport import Session, Stream, connect
from aiowt.transport._protocol import WebTransportProtocol
from aiowt.transport.tls import SelfSignedCertificate
from tests.conftest import ServerFactory, bounded
from tests.reliability.conftest import Services
from tests.reliability.support import (
    actor_tasks,
    connections_closed,
    driver,
    live_objects,
    read_line_starting,
    scaled,
    start_peer,
    watching,
)

SESSIONS = scaled(1_000, 10_000)
CONCURRENCY = 50
KILLED = scaled(20, 60)
"""Sessions held by the client process that is SIGKILLed."""
IDLE_TIMEOUT = 3.0
"""The server's QUIC idle timeout: how long a silently dropped client is kept."""
ROUTE = "/churn/{n}"
TRACED = scaled(200, 2_000)
"""Sessions of the wave run under tracemalloc."""
MEMORY_BOUND = 384 * 1024 + 128 * TRACED
"""Bytes traced memory may grow by over the traced wave. Measured: 90-210 KB, all of it
caches and bookkeeping of the test itself (urllib's split cache, task objects of the
waits, counters); a leaked session (tens of KB: its QUIC connection, streams, actor)
crosses the bound after a dozen sessions. Leaked objects are also counted directly."""


CLIENTS: weakref.WeakSet[WebTransportProtocol] = weakref.WeakSet()
"""Every client connection still referenced anywhere (closing ones, by their timers)."""


class Live(Handler):
    """Echoes datagrams and stream bytes; counts the handlers that are running."""

    running: ClassVar[int] = 0
    started: ClassVar[int] = 0

    async def on_start(self) -> None:
        Live.running += 1
        Live.started += 1

    async def on_datagram(self, data: bytes) -> None:
        self.send_datagram(data)

    async def on_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if stream.writable:
            stream.write(data, end_stream=end_stream)

    async def on_stop(self) -> None:
        Live.running -= 1


async def talk(session: Session) -> None:
    session.send_datagram(b"hello")
    assert await session.receive_datagram() == b"hello"
    stream = session.open_stream()
    stream.write(b"x" * 3000, end_stream=True)
    assert await stream.read_all() == b"x" * 3000


async def one_session(
    url: str,
    cert_hash: bytes,
    ending: str,
    outcomes: Counter[str],
    dropped: list[WebTransportProtocol],
) -> None:
    session = await connect(url, cert_hash=cert_hash, idle_timeout=2 * IDLE_TIMEOUT)
    CLIENTS.add(driver(session))
    outcomes["accepted"] += 1
    if ending == "close":
        await talk(session)
        await session.aclose()
    elif ending == "quiet":
        await session.aclose()
    elif ending == "abort":
        # Vanish mid-stream: bytes written, no FIN, no close capsule.
        session.open_stream().write(b"y" * 5000)
        session.send_datagram(b"bye")
        await session.abort()
    elif ending == "drop":
        await talk(session)
        # The UDP socket goes away without a packet: the server hears only silence.
        drop_socket(driver(session))
        dropped.append(driver(session))
    outcomes[ending] += 1


class _Void(asyncio.DatagramTransport):
    """Where a dropped client's QUIC stack sends from now on: nowhere."""

    def sendto(self, data: Any, addr: Any = None) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def drop_socket(protocol: WebTransportProtocol) -> None:
    """Close a client's UDP socket without a packet. Its QUIC stack keeps its timers (it
    times out on its own, as a client whose network vanished does) but sends nothing."""
    real = protocol._transport
    protocol._transport = _Void()
    real.abort()


def _endings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(["close", "quiet", "abort", "drop"], weights=[35, 25, 25, 15], k=count)


@pytest.mark.timeout(scaled(180, 1_800))
async def test_churn_leaves_nothing_behind(
    services: Services, make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    Live.running = Live.started = 0
    rates = services(RateLimitRegistry.start())
    registry = services(SessionRegistry.start())
    collector = services(MetricsCollector.start())
    stats = ConcurrencyStats(metrics=collector)

    def configure(server: Server) -> None:
        server.use(
            Metrics(collector),
            stats,
            MaxSessions(10 * CONCURRENCY + KILLED, registry=registry),
            RateLimit(10 * CONCURRENCY + KILLED, registry=rates),
            TokenBucket(1_000, 200),
            DepthGuard(8),
        )
        server.route(ROUTE, Live, RouteRateLimit(10 * CONCURRENCY + KILLED, registry=rates))

    loop = asyncio.get_running_loop()
    with watching(loop) as watch:
        server = await make_server(configure, idle_timeout=IDLE_TIMEOUT)
        host, port = server.address
        listener = server.listener

        def url(n: int) -> str:
            return f"https://{host}:{port}/churn/{n}"

        outcomes: Counter[str] = Counter()
        timings: dict[str, float] = {}
        dropped: list[WebTransportProtocol] = []

        async def wave(
            name: str, first: int, count: int, seed: int, concurrency: int = CONCURRENCY
        ) -> None:
            """`count` sessions, `concurrency` at a time; then wait until the server has
            let go of all of them (dropped clients: after its idle timeout)."""
            gate = asyncio.Semaphore(concurrency)

            async def limited(n: int, ending: str) -> None:
                async with gate:
                    await one_session(url(n), certificate.sha256, ending, outcomes, dropped)

            started = time.monotonic()
            async with bounded(scaled(120, 1_500)):
                endings = _endings(count, seed)
                await asyncio.gather(*(limited(first + n, e) for n, e in enumerate(endings)))
            async with bounded(10 * IDLE_TIMEOUT + 10):
                await server.wait_idle()
                await connections_closed(list(listener.connections), 10 * IDLE_TIMEOUT)
                # The clients' own QUIC stacks end too (dropped ones by their idle timeout).
                await connections_closed(dropped, 10 * IDLE_TIMEOUT)
                dropped.clear()
                await connections_closed(list(CLIENTS), 10 * IDLE_TIMEOUT)
            timings[name] = round(time.monotonic() - started, 1)

        # Warm up (first-use imports, caches, the services' first messages), then count.
        await wave("warm-up", 0, CONCURRENCY, 1)
        tasks_before = asyncio.all_tasks()
        actors_before = actor_tasks()
        objects_before = live_objects()

        # A client process with sessions open, killed with SIGKILL mid-life...
        child = await start_peer("hold", url(10**6), certificate.sha256_hex, str(KILLED))
        try:
            async with bounded(30):
                assert await read_line_starting(child, "ready") == f"ready {KILLED}"
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        assert child.returncode == -signal.SIGKILL
        # ... while thousands of sessions come and go.
        await wave("churn", CONCURRENCY, SESSIONS, 2)

        # Then a wave under tracemalloc (which triples the cost of everything it sees).
        # Its first sessions warm up what tracemalloc would count as new (tables resized
        # while tracing, whose older versions it never saw).
        tracemalloc.start()
        try:
            await wave("traced warm-up", CONCURRENCY + SESSIONS, CONCURRENCY, 3, 10)
            memory_before = _settled_memory()
            await wave("traced", 2 * CONCURRENCY + SESSIONS, TRACED, 4, 10)
            memory_after = _settled_memory()
        finally:
            tracemalloc.stop()

        total = 2 * CONCURRENCY + SESSIONS + TRACED + KILLED
        assert outcomes["accepted"] == total - KILLED, outcomes
        assert Live.started == total
        assert Live.running == 0
        assert server.live_sessions == 0
        assert not listener.connections
        leftover = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
        assert not leftover, leftover
        assert actor_tasks() == actors_before
        objects_after = live_objects()
        for kind in ("Handler", "Session", "Stream", "WebTransportProtocol"):
            assert objects_after[kind] <= objects_before[kind], (kind, objects_after)
        assert await ask(rates, HolderCounts()) == {}
        assert await ask(registry, CountSessions()) == 0
        snapshot = await ask(collector, TakeSnapshot())
        assert snapshot.value(names.SESSIONS_ACTIVE.name, {"route": ROUTE}) == 0
        # Metrics and ConcurrencyStats share the collector: each session counted once.
        assert snapshot.total(names.SESSIONS_ACTIVE.name) == 0
        assert (await stats.read()).accepted == total
        carried = {"route": ROUTE, "transport": "webtransport"}
        assert snapshot.value(names.SESSIONS_ACCEPTED.name, carried) == total
        assert snapshot.value(names.HANDSHAKES.name, {**carried, "status": "200"}) == total
        growth = memory_after - memory_before
        print(f"churn: {dict(outcomes)} killed={KILLED} growth={growth} B seconds={timings}")
        assert growth < MEMORY_BOUND, f"traced memory grew by {growth} bytes"
    watch.check()


def _settled_memory() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]
