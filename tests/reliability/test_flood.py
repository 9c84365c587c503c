"""Flood: one peer sends datagrams and opens streams as fast as it can, while a
well-behaved peer does request/response on a stream of its own session.

The flooder runs in a child process (the other core of the machine, as a remote peer
would be). Both peers use the same route, behind `TokenBucket` and `DepthGuard`. Checked:

- the good peer's p99 round trip under the flood stays within 2x of its p99 without it
  (medians of `REPETITIONS` runs of `REQUESTS` round trips each; both measured in this
  test). On a loaded 2-core machine a sub-millisecond p99 is mostly scheduling noise, so
  the unloaded value is floored at `FLOOR` seconds before doubling;
- the flooder is limited: its handler sees at most the bucket's burst plus its rate over
  the flood's duration, the excess is counted, and at most `DEPTH` of its streams are open
  at once, the rest refused;
- no error is logged and nothing escapes.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from typing import Any, ClassVar

import pytest

from aiowt import Server
from aiowt.actors import Handler, ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.middleware.limits import (
    DepthGuard,
    TokenBucket,
)
from aiowt.transport import CloseCode, CloseInfo, Stream, StreamClosedError
from aiowt.transport.engine import default_engine
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded
from tests.reliability.conftest import Services
from tests.reliability.support import (
    percentile,
    read_line_starting,
    scaled,
    start_peer,
    watching,
)

REQUESTS = scaled(300, 2_000)
REPETITIONS = 7
FLOOR = 0.005
"""Seconds: the unloaded p99 is taken as at least this before the 2x comparison."""
RATE, BURST, DEPTH = (10_000.0 if default_engine() == "qh3" else 5_000.0), 500, 8
"""The bucket is above the good peer's own rate (one message per round trip, unloaded
here: ~3,000/s on aioquic, ~6,500/s on qh3), which it must never meet, and no higher than
that needs: the flood is three times the bucket, and at 45,000 datagrams/s (a 15,000/s
bucket on qh3) the server's intake, not the bucket, set the good peer's p99 (medians of
1-15 ms, one run in six over the bound). At 30,000/s its medians are 1.5-2 ms."""
FLOOD_SECONDS = 60.0
"""The flooder's own limit; the test stops it much sooner."""
FLOOD_RATE = 3 * RATE
"""Datagrams per second: three times what its bucket lets through, so most are dropped.
Unpaced, an aioquic flooder on an idle two-core machine reached ~60,000/s, past what one
server process can take in (each datagram is decrypted and parsed before any bucket sees
it): the good peer then waits behind the flood in the socket's receive queue (p99 20-50
ms), which no application-level fairness can change. That limit is the server's CPU per
datagram (docs/performance.md), not what this test is about."""


class Service(Handler):
    """Answers each stream message on its stream; counts what each session receives."""

    datagrams: ClassVar[dict[str, int]] = {}
    peak_streams: ClassVar[dict[str, int]] = {}
    flooded: ClassVar[asyncio.Event]

    async def on_start(self) -> None:
        self.key = self.ctx.request.header("x-peer") or "?"
        Service.datagrams[self.key] = 0
        Service.peak_streams[self.key] = 0

    async def on_datagram(self, data: bytes) -> None:
        Service.datagrams[self.key] += 1
        if Service.datagrams[self.key] >= BURST:
            Service.flooded.set()

    async def on_stream(self, stream: Stream) -> None:
        # The transport's table of the session's live streams: what DepthGuard bounds.
        Service.peak_streams[self.key] = max(
            Service.peak_streams[self.key], len(self.session.streams)
        )

    async def on_stream_end(self, stream: Stream) -> None:
        stream.finish()  # both directions end: DepthGuard counts it closed

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if stream is not None and message != "flood" and message is not None:
            stream.send_message(message)


async def round_trips(stream: Stream, count: int) -> list[float]:
    times: list[float] = []
    for n in range(count):
        started = time.perf_counter()
        stream.send_message(n)
        try:
            reply = await stream.receive_message()
        except StreamClosedError as error:
            raise AssertionError(
                f"the good peer's stream was reset (code {error.code:#x})"
            ) from None
        assert reply == n
        times.append(time.perf_counter() - started)
    return times


async def p99s(stream: Stream) -> list[float]:
    return [percentile(await round_trips(stream, REQUESTS), 0.99) for _ in range(REPETITIONS)]


@pytest.mark.timeout(scaled(120, 900))
async def test_a_flood_neither_starves_a_good_peer_nor_gets_through(
    services: Services,
    make_server: ServerFactory,
    client: ClientFactory,
    certificate: SelfSignedCertificate,
) -> None:
    Service.datagrams, Service.peak_streams = {}, {}
    Service.flooded = asyncio.Event()
    metrics = services(MetricsCollector.start())

    def configure(server: Server) -> None:
        server.route(
            "/service",
            Service,
            TokenBucket(RATE, BURST, metrics=metrics),
            DepthGuard(DEPTH, metrics=metrics),
        )

    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(configure)
        good_session = await client(server, "/service", headers=[("x-peer", "good")])
        good = good_session.open_stream()
        async with bounded(60):
            await round_trips(good, 50)  # warm up
            unloaded = await p99s(good)

        host, port = server.address
        flooder = await start_peer(
            "flood",
            f"https://{host}:{port}/service",
            certificate.sha256_hex,
            str(FLOOD_SECONDS),
            str(FLOOD_RATE),
        )
        try:
            async with bounded(30):
                await read_line_starting(flooder, "flooding")
                await Service.flooded.wait()  # the flood reaches the server
            seen_before = Service.datagrams["flooder"]
            dropped_before = (await ask(metrics, TakeSnapshot())).value(
                names.TOKEN_BUCKET_EXCESS.name, {"kind": "datagram", "action": "drop"}
            )
            flood_started = time.monotonic()
            async with bounded(120):
                # The flood's onset (the flooder's first bursts fill the server socket's
                # receive queue, which every peer shares) is measured but not counted.
                onset = percentile(await round_trips(good, REQUESTS), 0.99)
                loaded = await p99s(good)
            flood_seconds = time.monotonic() - flood_started
            flooder_seen = Service.datagrams["flooder"] - seen_before
            dropped = (await ask(metrics, TakeSnapshot())).value(
                names.TOKEN_BUCKET_EXCESS.name, {"kind": "datagram", "action": "drop"}
            ) - dropped_before

        finally:
            flooder.send_signal(signal.SIGKILL)
            await flooder.wait()

        baseline = statistics.median(unloaded)
        under_flood = statistics.median(loaded)
        print(
            f"flood: unloaded p99 {[round(v * 1e3, 3) for v in unloaded]} ms, "
            f"onset p99 {onset * 1e3:.3f} ms, loaded p99 {[round(v * 1e3, 3) for v in loaded]} ms, "
            f"flooder datagrams: {flooder_seen} handled, {dropped:.0f} dropped "
            f"in {flood_seconds:.2f} s"
        )
        assert under_flood <= 2 * max(baseline, FLOOR), (baseline, under_flood)

        # While we measured, the flooder sent more than its bucket allows (the excess was
        # dropped and counted), and its handler saw no more than the bucket's rate.
        allowed = BURST + RATE * flood_seconds
        assert flooder_seen <= allowed, (flooder_seen, allowed)
        assert dropped > flooder_seen, (dropped, flooder_seen)
        snapshot = await ask(metrics, TakeSnapshot())
        assert snapshot.value(names.STREAMS_REFUSED.name, {"middleware": "DepthGuard"}) > 0
        assert Service.peak_streams["flooder"] <= DEPTH
        assert Service.peak_streams["good"] <= 1
    watch.check(allowed=["peer error"])


class Stalled(Handler):
    """Holds the message "wait" until `gate` opens: what follows queues in its inbox."""

    gate: ClassVar[asyncio.Event]
    waiting: ClassVar[asyncio.Event]
    stops: ClassVar[asyncio.Queue[CloseInfo | None]]

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if message == "wait":
            self.waiting.set()
            await self.gate.wait()

    async def on_stop(self) -> None:
        self.stops.put_nowait(self.close_info)


async def test_a_peer_faster_than_its_handler_is_closed_at_the_inbox_bound(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    """aioquic grants flow-control credit on arrival, so only `max_inbox_bytes` keeps a
    peer that sends faster than its handler handles from growing the handler's inbox."""
    Stalled.gate, Stalled.waiting, Stalled.stops = asyncio.Event(), asyncio.Event(), asyncio.Queue()
    limit = 64 * 1024
    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(
            lambda s: s.route("/stalled", Stalled).route("/echo", Echo), max_inbox_bytes=limit
        )
        bystander = await client(server, "/echo")
        session = await client(server, "/stalled")
        stream = session.open_stream()
        async with bounded(10):
            stream.send_message("wait")
            await Stalled.waiting.wait()
            for _ in range(4 * limit // 4096):
                stream.send_message(b"x" * 4096)
            info = await session.wait_closed()
            assert info.code == CloseCode.RATE_LIMITED, info
            Stalled.gate.set()
            assert (await Stalled.stops.get()) is not None
            # The bystander's session is untouched.
            bystander.send_datagram(b"still here")
            assert await bystander.receive_datagram() == b"still here"
    watch.check(allowed=["peer sends faster than its handler handles"])
