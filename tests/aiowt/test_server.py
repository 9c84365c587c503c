"""`Server` as the composition root: its services, handed out once; closing; accessors.

Real handshakes through in-memory QUIC connections (`Server.connect_in_memory`): every
part but the socket.
"""

from __future__ import annotations

import pytest

from aiowt import HandshakeError, Server, UsageError
from aiowt.actors import Handler, MetricsCollector, RateLimitRegistry, Services, ask
from aiowt.actors.metrics import TakeSnapshot
from aiowt.actors.ratelimit import HolderCounts
from aiowt.actors.sessions import CountSessions
from aiowt.middleware import MaxSessions, Metrics, RateLimit, Recover, TokenBucket
from aiowt.middleware.chain import CallNext
from aiowt.transport import SessionContext
from tests.conftest import bounded


class Idle(Handler):
    """A session that stays open until the client leaves."""


async def _refused(server: Server, path: str) -> int:
    with pytest.raises(HandshakeError) as refused:
        await server.connect_in_memory(path)
    return refused.value.status


async def test_the_server_starts_its_services_and_hands_them_to_its_middleware() -> None:
    metrics, limit, cap, bucket = Metrics(), RateLimit(10), MaxSessions(10), TokenBucket(5, 5)
    server = Server()
    server.use(metrics, limit, cap, bucket).route("/a", Idle)
    with pytest.raises(UsageError, match="start the server first"):
        server.services  # noqa: B018
    session = await server.connect_in_memory("/a")
    services = server.services
    assert metrics.service.started is services.metrics
    assert limit.service.started is services.rate_limits
    assert cap.service.started is services.rate_limits  # its cap is a slot there
    assert cap.sessions.started is services.sessions  # and it lists its sessions here
    assert bucket.metrics.started is services.metrics
    assert await ask(services.sessions, CountSessions()) == 1
    await session.aclose()
    await server.shutdown()
    assert not services.metrics.is_alive()
    assert not services.rate_limits.is_alive()


async def test_a_ref_given_to_a_middleware_wins_over_the_servers() -> None:
    registry = RateLimitRegistry.start()
    try:
        limit = RateLimit(10, registry=registry)
        server = Server()
        server.use(limit).route("/a", Idle)
        session = await server.connect_in_memory("/a")
        assert limit.service.started is registry
        # Given explicitly, the registry is shared on purpose: plain scope names.
        assert await ask(registry, HolderCounts()) == {"ip": {"127.0.0.1": 1}}
        await session.aclose()
        await server.shutdown()
        assert registry.is_alive()
    finally:
        await registry.stop(block=False)


async def test_limits_sharing_the_servers_registries_keep_their_own_counts() -> None:
    """A route's RateLimit(1) and MaxSessions(1) under global ones of 10: each counts
    under its own place in the server, so the route's limits still bite."""
    server = Server()
    server.use(RateLimit(10), MaxSessions(10))
    server.route("/a", Idle, RateLimit(1)).route("/b", Idle, MaxSessions(1)).route("/c", Idle)
    first = await server.connect_in_memory("/a")
    assert await _refused(server, "/a") == 429
    on_b = await server.connect_in_memory("/b")
    assert await _refused(server, "/b") == 503
    on_c = await server.connect_in_memory("/c")
    counts = await ask(server.services.rate_limits, HolderCounts())
    assert counts == {
        "ip@use[0]": {"127.0.0.1": 3},
        "sessions@use[1]": {"": 3},
        "ip@/a[0]": {"127.0.0.1": 1},
        "sessions@/b[0]": {"": 1},
    }
    assert await ask(server.services.sessions, CountSessions()) == 3
    for session in (first, on_b, on_c):
        await session.aclose()
    await server.shutdown()


async def test_services_given_to_the_server_are_shared_and_left_running() -> None:
    services = Services.start()
    try:
        one, two = Server(services=services), Server(services=services)
        for server in (one, two):
            server.use(Metrics()).route("/a", Idle)
        sessions = [await one.connect_in_memory("/a"), await two.connect_in_memory("/a")]
        for session in sessions:
            await session.aclose()
        await one.shutdown()
        await two.shutdown()
        assert services.metrics.is_alive()
        snapshot = await ask(services.metrics, TakeSnapshot())
        assert snapshot.total("aiowt_sessions_accepted_total") == 2
    finally:
        await services.stop()


class Holds:
    """A middleware holding something to release at shutdown (a `Closable`)."""

    def __init__(self) -> None:
        self.closed = 0

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        await call_next(ctx)

    async def aclose(self) -> None:
        self.closed += 1


async def test_closable_middleware_are_closed_once_at_shutdown() -> None:
    holds = Holds()
    server = Server()
    server.use(holds).route("/a", Idle, holds).route("/b", Idle, holds)
    session = await server.connect_in_memory("/a")
    await session.aclose()
    await server.shutdown()
    await server.shutdown()  # twice: nothing more
    assert holds.closed == 1


async def test_a_server_used_in_memory_only_is_shut_down_too() -> None:
    server = Server()
    server.use(Recover()).route("/a", Idle)
    session = await server.connect_in_memory("/a")
    services = server.services
    await session.aclose()
    async with bounded():
        await server.shutdown()
    assert not services.metrics.is_alive()


async def test_accessors_read_without_reaching_into_the_server() -> None:
    server = Server(host="127.0.0.1", port=0)
    server.route("/a", Idle)
    with pytest.raises(UsageError):
        server.listener  # noqa: B018
    assert server.certificate_files is None
    await server.start()
    try:
        assert server.listener.address == server.address
        assert list(server.chains) == ["/a"]
        session = await server.connect_in_memory("/a")
        # The server records a session as it sends its 200: before the client sees it.
        assert len(server.sessions) == server.live_sessions == 1
        await session.aclose()
    finally:
        await server.shutdown()


def test_routes_take_handler_classes_only() -> None:
    server = Server()
    with pytest.raises(UsageError, match="Handler subclass"):
        server.route("/a", object)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="Handler subclass"):
        server.route("/b", Recover)  # type: ignore[arg-type]


def test_services_must_be_a_bundle() -> None:
    with pytest.raises(UsageError):
        Server(services=MetricsCollector)  # type: ignore[arg-type]
