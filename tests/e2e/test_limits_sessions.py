"""Session limits end to end: what a refused client sees, slots released however sessions
end, and the registry's lookups and broadcasts reaching real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pykka
import pytest

from aiowt import Server
from aiowt.actors import Handler, ask
from aiowt.actors.ratelimit import HolderCounts, RateLimitRegistry
from aiowt.actors.sessions import (
    Broadcast,
    BroadcastExcept,
    CountSessions,
    Delivery,
    ListSessions,
    Multicast,
    SessionRegistry,
)
from aiowt.middleware.chain import CallNext
from aiowt.middleware.limits import MaxSessions, PerPathRateLimit, RateLimit, RouteRateLimit
from aiowt.transport import CloseCode, HandshakeError, SessionContext, Stream
from tests.conftest import ClientFactory, ServerFactory, bounded


class Ends:
    """Outermost test middleware: hands over each session's context once its chain has
    unwound, so every inner middleware's after-code (and its tells) has run."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[SessionContext] = asyncio.Queue()

    def __repr__(self) -> str:
        return "Ends()"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        try:
            await call_next(ctx)
        finally:
            self.queue.put_nowait(ctx)

    async def next(self, count: int = 1) -> list[SessionContext]:
        async with bounded(10):
            return [await self.queue.get() for _ in range(count)]


class Stop:
    """What a test started and must stop: middleware (`aclose`) and service refs."""

    def __init__(self) -> None:
        self.things: list[Any] = []

    def __call__(self, thing: Any) -> Any:
        self.things.append(thing)
        return thing

    async def all(self) -> None:
        for thing in reversed(self.things):
            if isinstance(thing, pykka.ActorRef):
                if thing.is_alive():
                    await thing.stop(block=False)
            else:
                await thing.aclose()


@pytest.fixture(autouse=True)
async def stop() -> AsyncIterator[Stop]:
    """Autouse, so it is set up first and torn down last: after the servers are down."""
    stopper = Stop()
    yield stopper
    async with bounded():
        await stopper.all()


class Crashy(Handler):
    async def on_start(self) -> None:
        raise RuntimeError("handler bug")


async def refused(client: ClientFactory, server: Server, path: str) -> HandshakeError:
    with pytest.raises(HandshakeError) as caught:
        await client(server, path)
    return caught.value


async def test_rate_limit_refuses_the_third_session_from_one_ip_with_429(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    registry = stop(RateLimitRegistry.start())
    ends = Ends()
    server = await make_server(
        lambda s: s.use(ends, RateLimit(2, registry=registry, retry_after=3)).route("/x", Handler)
    )
    first = await client(server, "/x")
    second = await client(server, "/x")  # another port, the same IP: counted together
    error = await refused(client, server, "/x")
    assert error.status == 429
    assert error.reason == "too many concurrent sessions from 127.0.0.1 (limit 2)"
    assert ("retry-after", "3") in error.headers
    await ends.next()  # the refused one

    await first.aclose()
    await ends.next()
    third = await client(server, "/x")  # the closed session's slot is free again
    await second.abort()  # an abrupt end frees its slot too
    await ends.next()
    fourth = await client(server, "/x")
    assert await ask(registry, HolderCounts()) == {"ip": {"127.0.0.1": 2}}
    await third.aclose()
    await fourth.aclose()
    await ends.next(2)
    assert await ask(registry, HolderCounts()) == {}


async def test_a_crashing_handler_gives_its_slot_back(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    registry = stop(RateLimitRegistry.start())
    ends = Ends()
    server = await make_server(
        lambda s: s.use(ends, RateLimit(1, registry=registry)).route("/crash", Crashy)
    )
    for _ in range(3):
        session = await client(server, "/crash")
        async with bounded():
            assert (await session.wait_closed()).code == CloseCode.INTERNAL_ERROR
        await ends.next()
    assert await ask(registry, HolderCounts()) == {}


async def test_route_rate_limit_counts_per_route_pattern(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    registry = stop(RateLimitRegistry.start())
    limit = RouteRateLimit(1, registry=registry)
    ends = Ends()

    def configure(s: Server) -> None:
        s.use(ends)
        s.route("/room/{name}", Handler, limit)
        s.route("/lobby", Handler, limit)

    server = await make_server(configure)
    room = await client(server, "/room/a")
    error = await refused(client, server, "/room/b")  # another path, the same pattern
    assert error.status == 429
    assert "route /room/{name}" in error.reason
    await client(server, "/lobby")  # another route: its own count
    await room.aclose()
    await ends.next(2)
    await client(server, "/room/b")


async def test_per_path_rate_limit_counts_per_resolved_path(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    limit = stop(PerPathRateLimit(1))  # starts its own registry
    server = await make_server(lambda s: s.use(limit).route("/room/{name}", Handler))
    await client(server, "/room/a")
    await client(server, "/room/b")
    error = await refused(client, server, "/room/a")
    assert (error.status, error.reason) == (
        429,
        "too many concurrent sessions on /room/a (limit 1)",
    )


async def test_max_sessions_refuses_with_503_and_the_registry_follows_the_sessions(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    registry = stop(SessionRegistry.start())
    ends = Ends()
    server = await make_server(
        lambda s: s.use(ends, MaxSessions(2, registry=registry)).route("/x", Handler)
    )
    first = await client(server, "/x")
    await client(server, "/x")
    error = await refused(client, server, "/x")
    assert (error.status, error.reason) == (503, "server at capacity (2 sessions)")
    assert ("retry-after", "1") in error.headers
    await ends.next()
    assert await ask(registry, CountSessions()) == 2
    await first.abort()
    await ends.next()
    assert await ask(registry, CountSessions()) == 1
    await client(server, "/x")


async def test_broadcasts_reach_real_clients(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    registry = stop(SessionRegistry.start())
    started: asyncio.Queue[str] = asyncio.Queue()

    class Announced(Handler):
        async def on_start(self) -> None:
            started.put_nowait(self.ctx.session_id)

    server = await make_server(
        lambda s: s.use(MaxSessions(10, registry=registry)).route("/x", Announced)
    )
    clients = []
    ids = []
    for _ in range(3):
        clients.append(await client(server, "/x"))
        async with bounded():
            ids.append(await started.get())
    # The handler started after the transport session was attached (a tell before it).
    assert [info.session_id for info in await ask(registry, ListSessions())] == ids

    async with bounded():
        assert await ask(registry, Broadcast({"type": "news", "n": 1})) == Delivery(3, 0, 0)
        for session in clients:
            assert await session.receive_datagram_message() == {"type": "news", "n": 1}

        assert await ask(registry, BroadcastExcept(ids[0], "not you")) == Delivery(2, 0, 0)
        assert await ask(registry, Multicast([ids[0], "nobody"], "just you")) == Delivery(1, 0, 1)
        assert await clients[0].receive_datagram_message() == "just you"
        for session in clients[1:]:
            assert await session.receive_datagram_message() == "not you"

        for n in range(3):
            await ask(registry, Broadcast({"seq": n}, via="stream"))
        for session in clients:
            stream: Stream = await session.accept_stream()
            assert [await stream.receive_message() for _ in range(3)] == [
                {"seq": 0},
                {"seq": 1},
                {"seq": 2},
            ]

    # A client gone without a word is still registered for a moment; the broadcast
    # that meets it counts a failure or a delivery, and the others still get it.
    await clients[0].abort()
    async with bounded():
        delivery = await ask(registry, Broadcast("after"))
        assert delivery.delivered >= 2
        assert delivery.delivered + delivery.failed + delivery.missing <= 3
        for session in clients[1:]:
            assert await session.receive_datagram_message() == "after"
