"""Churn: many real sessions opened and closed at once through RateLimit, MaxSessions and
RouteRateLimit (each of them refusing some, some sessions dropped without a word);
afterwards every count is zero."""

from __future__ import annotations

import asyncio
import os
import random
from typing import ClassVar

from aiowt import Server
from aiowt.actors import Handler, ask
from aiowt.actors.ratelimit import HolderCounts, RateLimitRegistry
from aiowt.actors.sessions import CountSessions, SessionRegistry
from aiowt.middleware.limits import MaxSessions, RateLimit, RouteRateLimit
from aiowt.transport import HandshakeError
from tests.conftest import ClientFactory, ServerFactory, bounded
from tests.e2e.test_limits_sessions import Ends, Stop, stop

__all__ = ["stop"]  # the autouse fixture, re-used here

SESSIONS = int(os.environ.get("AIOWT_CHURN_SESSIONS", "1200"))
CONCURRENCY = 50
# A third of the clients go to /a (RouteRateLimit), a third to /b (RateLimit: every client
# is 127.0.0.1, so it caps that route), a third to /c (no limit of its own); together they
# want more than MaxSessions allows. So each of the three limits refuses some sessions.
MAX_ROUTE, MAX_PER_IP, MAX_SESSIONS = 10, 10, 30


class Live(Handler):
    """Tracks how many handlers run at once, per route and in all (the limits bound it)."""

    now: ClassVar[dict[str, int]] = {}
    peak: ClassVar[dict[str, int]] = {}

    def _count(self, delta: int) -> None:
        for key in (self.ctx.route_pattern, "all"):
            Live.now[key] = Live.now.get(key, 0) + delta
            Live.peak[key] = max(Live.peak.get(key, 0), Live.now[key])

    async def on_start(self) -> None:
        self._count(1)

    async def on_datagram(self, data: bytes) -> None:
        self.send_datagram(data)

    async def on_stop(self) -> None:
        self._count(-1)


async def test_churn_leaves_every_count_at_zero(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    Live.now, Live.peak = {}, {}
    rates = stop(RateLimitRegistry.start())
    sessions = stop(SessionRegistry.start())
    ends = Ends()

    def configure(s: Server) -> None:
        s.use(ends, MaxSessions(MAX_SESSIONS, registry=sessions))
        s.route("/a/{n}", Live, RouteRateLimit(MAX_ROUTE, registry=rates))
        s.route("/b/{n}", Live, RateLimit(MAX_PER_IP, registry=rates))
        s.route("/c/{n}", Live)

    server = await make_server(configure, idle_timeout=10)
    rng = random.Random(1234)
    endings = [rng.choice(["close", "close", "abort", "talk"]) for _ in range(SESSIONS)]
    outcomes: dict[str, int] = {}
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        async with gate:
            try:
                session = await client(server, f"/{'abc'[n % 3]}/{n}")
            except HandshakeError as refused:
                kind = f"{refused.status} {refused.reason.split(' (')[0]}"
                outcomes[kind] = outcomes.get(kind, 0) + 1
                return
            outcomes["accepted"] = outcomes.get("accepted", 0) + 1
            if endings[n] == "talk":
                session.send_datagram(b"hi")
                async with bounded(10):
                    assert await session.receive_datagram() == b"hi"
            if endings[n] == "abort":
                await session.abort()
            else:
                await session.aclose()

    async with bounded(100):
        await asyncio.gather(*(one(n) for n in range(SESSIONS)))
        await ends.next(SESSIONS)  # every chain has unwound, refused ones included

    assert sum(outcomes.values()) == SESSIONS
    assert set(outcomes) == {
        "accepted",
        "429 too many concurrent sessions on route /a/{n}",
        "429 too many concurrent sessions from 127.0.0.1",
        "503 server at capacity",
    }, outcomes
    assert outcomes["accepted"] > SESSIONS // 2, outcomes
    assert await ask(rates, HolderCounts()) == {}
    assert await ask(sessions, CountSessions()) == 0
    assert server.live_sessions == 0
    assert set(Live.now.values()) == {0}
    assert Live.peak["/a/{n}"] <= MAX_ROUTE
    assert Live.peak["/b/{n}"] <= MAX_PER_IP
    assert Live.peak["all"] <= MAX_SESSIONS
