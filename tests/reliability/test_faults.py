"""Faults on the path: packet loss and reordering on loopback, through a UDP relay written
in the test (`support.UdpRelay`: per-direction loss, and packets held back for up to a few
milliseconds so that later ones overtake them, from a seeded RNG).

Through it, concurrent sessions each: echo a large random payload on a bidirectional
stream (it must come back whole and in order), exchange a sequence of msgpack messages
(all of them, in order), echo on a unidirectional stream, and close with an application
code and reason that the server's handler must see exactly (the close capsule is stream
data: reliable). The loss must really have happened (the relay's counters are checked).
"""

from __future__ import annotations

import asyncio
import gc
import random
from typing import ClassVar

import pytest

from aiowt.transport import CloseInfo, SessionClosedError, connect
from aiowt.transport.engine import default_engine
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import ServerFactory, bounded
from tests.reliability.support import UdpRelay, driver, scaled, watching

SESSIONS = scaled(6, 24)
PAYLOAD = scaled(256 * 1024, 2 * 1024 * 1024)
MESSAGES = scaled(40, 300)
PATHS = {
    "10% loss, 10% reordered": (0.10, 0.10),
    "2% loss, 50% reordered": (0.02, 0.50),
}
EXTREME = "25% loss, 25% reordered"
"""Soak only. Here a connection may go silent past its idle timeout: aioquic doubles its
probe timeout after each lost probe (and ACK), while the idle timer runs from the last
packet received, so some runs lose a connection or two to "Idle timeout" (30 s, and even
120 s). On this path an exchange must complete byte-exact *or* fail loudly with that
close: never end short as if complete."""
if scaled(0, 1):
    PATHS[EXTREME] = (0.25, 0.25)


QH3_STALE_RESERVATION = "reserved stream is missing"
"""qh3 2.1's core, under loss and reordering, can commit a stream frame reserved for a
stream it has already removed, and then raise this (docs/engines.md has the cause and a
reproduction). aiowt contains it to that one connection, named; on qh3 the test accepts
a session that ended so, and still requires every other session to complete exactly."""


def _idle_timeout(result: object) -> bool:
    return isinstance(result, SessionClosedError) and result.reason == "Idle timeout"


def _lost_to_qh3(result: object) -> bool:
    return (
        default_engine() == "qh3"
        and isinstance(result, SessionClosedError)
        and QH3_STALE_RESERVATION in result.reason
    )


class Exchange(Echo):
    """Echo, and reports how each session ended."""

    ends: ClassVar[asyncio.Queue[tuple[str, CloseInfo | None]]]

    async def on_stop(self) -> None:
        self.ends.put_nowait((self.ctx.path_params["n"], self.close_info))


async def exchange(url: str, cert_hash: bytes, n: int) -> None:
    rng = random.Random(n)
    session = await connect(f"{url}/{n}", cert_hash=cert_hash, timeout=30)
    try:
        payload = rng.randbytes(PAYLOAD)
        bulk = session.open_stream()
        bulk.write(payload, end_stream=True)

        talk = session.open_stream()
        messages = [{"n": i, "pad": "x" * rng.randrange(0, 2000)} for i in range(MESSAGES)]
        for message in messages:
            talk.send_message(message)
        replies = [await talk.receive_message() for _ in messages]
        assert replies == messages  # all of them, in order

        one_way = session.open_stream(unidirectional=True)
        one_way.write(b"uni" * 1000, end_stream=True)
        back = await session.accept_stream()
        assert await back.read_all() == b"uni" * 1000

        echoed = await bulk.read_all()  # raises if the session ends first: never cut short
        assert echoed == payload, f"{len(echoed)} of {len(payload)} bytes"  # whole, in order
    finally:
        await session.aclose(4000 + n, f"done {n}")


@pytest.mark.timeout(scaled(120, 900))
@pytest.mark.parametrize("path", list(PATHS))
async def test_exchanges_complete_through_loss_and_reordering(
    make_server: ServerFactory, certificate: SelfSignedCertificate, path: str
) -> None:
    loss, reorder = PATHS[path]
    Exchange.ends = asyncio.Queue()
    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(lambda s: s.route("/x/{n}", Exchange))
        relay = UdpRelay(server.address, seed=len(path)).start()
        relay.loss_to_server = relay.loss_to_client = loss
        relay.reorder = reorder
        try:
            host, port = relay.address
            async with bounded(scaled(90, 800)):
                results = await asyncio.gather(
                    *(
                        exchange(f"https://{host}:{port}/x", certificate.sha256, n)
                        for n in range(SESSIONS)
                    ),
                    return_exceptions=True,
                )
                ends = dict([await Exchange.ends.get() for _ in range(SESSIONS)])
        finally:
            relay.close()
        timed_out = [n for n, result in enumerate(results) if _idle_timeout(result)]
        lost = [n for n, result in enumerate(results) if _lost_to_qh3(result)]
        print(f"faults {path}: {dict(relay.stats)}, timed out: {timed_out}, lost: {lost}")
        for n, result in enumerate(results):
            if (n in timed_out and path == EXTREME) or n in lost:
                continue
            if isinstance(result, BaseException):
                raise result
            # The client's close capsule is acknowledged before its CONNECTION_CLOSE leaves,
            # so even under loss the server hears the code and reason.
            info = ends[str(n)]
            assert info is not None
            assert (info.code, info.reason, info.by_peer) == (4000 + n, f"done {n}", True)
        assert len(timed_out) < SESSIONS // 4, timed_out
        assert len(lost) < SESSIONS // 2, lost  # rare: one in some runs, never most
        for direction in ("to_server", "to_client"):
            if loss:
                assert relay.stats[f"{direction}_dropped"] > 0
            assert relay.stats[f"{direction}_held"] > 0
        await asyncio.wait_for(server.wait_idle(), 10)  # on_stop ran; the chain unwinds after
        assert server.live_sessions == 0
    watch.check()


async def test_closing_a_client_over_a_dead_path_reports_nothing_to_the_loop(
    make_server: ServerFactory, certificate: SelfSignedCertificate
) -> None:
    loop = asyncio.get_running_loop()
    with watching(loop) as watch:
        server = await make_server(lambda s: s.route("/echo", Echo), idle_timeout=1.0)
        relay = UdpRelay(server.address).start()
        host, port = relay.address
        try:
            session = await connect(f"https://{host}:{port}/echo", cert_hash=certificate.sha256)
            relay.loss_to_server = relay.loss_to_client = 1.0  # the path dies
            protocol = driver(session)
            async with bounded(10):
                await session.aclose()
                await protocol.wait_closed()
            del session, protocol
            gc.collect()
        finally:
            relay.close()
    watch.check()
