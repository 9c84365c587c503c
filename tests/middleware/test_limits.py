"""The limits middleware without sockets: options, reprs, the release paths of the
concurrency limits, the TokenBucket and DepthGuard taps, against real actors; also the fakes
and fixtures the resilience and stats tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pykka
import pytest

from aiowt.actors import ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.actors.ratelimit import HolderCounts, RateLimitRegistry
from aiowt.actors.sessions import CountSessions, LookupSession, SessionRegistry
from aiowt.middleware.chain import CallNext
from aiowt.middleware.limits import (
    SESSION_BUCKET,
    DepthGuard,
    MaxSessions,
    PerPathRateLimit,
    RateLimit,
    RouteRateLimit,
    TokenBucket,
)
from aiowt.transport.codes import CloseCode
from aiowt.transport.context import CloseInfo, SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.events import (
    DatagramReceived,
    SessionAccepted,
    StreamClosed,
    StreamDataReceived,
    StreamOpened,
)
from aiowt.transport.request import ConnectRequest
from aiowt.transport.session import Session, Stream
from tests.conftest import bounded


def make_ctx(
    path: str = "/room/1", ip: str = "10.0.0.1", port: int = 5000, pattern: str = "/room/{id}"
) -> SessionContext:
    request = ConnectRequest(
        method="CONNECT",
        scheme="https",
        authority="example.test",
        path=path,
        query_string="",
        protocol="webtransport",
        headers=(),
        remote_addr=(ip, port),
    )
    return SessionContext(request=request, route_pattern=pattern)


class FakeSession:
    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None
        self.datagrams: list[Any] = []
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    def close(self, code: int = 0, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)

    def send_datagram_message(self, message: Any) -> None:
        self.datagrams.append(message)


class FakeStream:
    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


PEER_CLOSED = CloseInfo(0, "", True)


def accepting(
    during: Callable[[SessionContext, FakeSession], Any] | None = None,
    close: CloseInfo | None = PEER_CLOSED,
) -> CallNext:
    """A terminal step that accepts like the server's: session, status, taps attached."""

    async def terminal(ctx: SessionContext) -> None:
        session = FakeSession()
        ctx.session = cast(Session, session)
        ctx.status = 200
        ctx.accepted_at = time.monotonic()
        for tap in ctx.taps:
            tap.observe(cast(Session, session), SessionAccepted())
        if during is not None:
            result = during(ctx, session)
            if asyncio.iscoroutine(result):
                await result
        ctx.close_info = close

    return terminal


def raising(error: BaseException) -> CallNext:
    async def terminal(ctx: SessionContext) -> None:
        raise error

    return terminal


@pytest.fixture
async def rate_registry() -> AsyncIterator[pykka.ActorRef[RateLimitRegistry]]:
    ref = RateLimitRegistry.start()
    yield ref
    await ref.stop(block=False)


# --- options and reprs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: RateLimit(0),
        lambda: RateLimit(True),
        lambda: RouteRateLimit(-1),
        lambda: PerPathRateLimit(1.5),
        lambda: MaxSessions(0),
        lambda: RateLimit(1, retry_after=0),
        lambda: RateLimit(1, registry="not a ref"),
        lambda: RateLimit(1, metrics=object()),
        lambda: TokenBucket(0, 1),
        lambda: TokenBucket(1, 0),
        lambda: TokenBucket(float("inf"), 1),
        lambda: TokenBucket(1, 1, on_excess="ignore"),
        lambda: DepthGuard(0),
    ],
)
def test_options_are_validated_at_construction(build: Callable[[], object]) -> None:
    with pytest.raises(UsageError):
        build()


def test_reprs_are_readable() -> None:
    assert repr(RateLimit(5)) == (
        "RateLimit(max_per_ip=5, retry_after=1, service=ServiceHandle(registry, not started))"
    )
    assert repr(RouteRateLimit(3, retry_after=2.5)).startswith(
        "RouteRateLimit(max_concurrent=3, retry_after=2.5,"
    )
    assert repr(PerPathRateLimit(2)).startswith("PerPathRateLimit(max_per_path=2,")
    assert repr(MaxSessions(100)).startswith("MaxSessions(max_sessions=100,")
    assert repr(TokenBucket(10, 20)) == "TokenBucket(rate=10, burst=20, on_excess='drop')"
    assert repr(DepthGuard(8)) == "DepthGuard(max_concurrent=8)"


# --- the concurrency limits -------------------------------------------------------------------


async def test_rate_limit_keys_on_the_ip_not_the_port_and_says_when_to_retry(
    rate_registry: pykka.ActorRef[RateLimitRegistry], metrics: pykka.ActorRef[MetricsCollector]
) -> None:
    limit = RateLimit(1, registry=rate_registry, metrics=metrics, retry_after=2.2)
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def hold(ctx: SessionContext, session: FakeSession) -> None:
        inside.set()
        await leave.wait()

    first = asyncio.create_task(limit(make_ctx(port=1111), accepting(hold)))
    async with bounded():
        await inside.wait()
        with pytest.raises(Rejected) as caught:
            await limit(make_ctx(port=2222), accepting())
    assert caught.value.status == 429
    assert "10.0.0.1" in caught.value.reason
    assert caught.value.headers == (("retry-after", "3"),)
    await limit(make_ctx(ip="10.0.0.2"), accepting())  # another IP has its own count
    leave.set()
    async with bounded():
        await first
    assert await ask(rate_registry, HolderCounts()) == {}
    snap = await ask(metrics, TakeSnapshot())
    assert (
        snap.value(
            names.REJECTIONS.name,
            {"route": "/room/{id}", "middleware": "RateLimit", "status": "429"},
        )
        == 1
    )


@pytest.mark.parametrize(
    "ending",
    [
        raising(RuntimeError("handler bug")),
        raising(Rejected(403, "refused further in")),
        accepting(close=CloseInfo(CloseCode.ABORTED, "gone", True)),
        accepting(),
    ],
    ids=["crash", "rejected-later", "aborted", "normal"],
)
async def test_the_slot_is_released_however_the_session_ends(
    rate_registry: pykka.ActorRef[RateLimitRegistry], ending: CallNext
) -> None:
    limits = [
        RateLimit(1, registry=rate_registry),
        RouteRateLimit(1, registry=rate_registry),
        PerPathRateLimit(1, registry=rate_registry),
    ]
    refusals = []
    for limit in limits:
        for _ in range(3):  # a leaked slot would refuse the second round
            try:
                await limit(make_ctx(), ending)
            except Rejected as error:
                refusals.append(error.status)
            except RuntimeError:
                pass
    assert 429 not in refusals
    assert await ask(rate_registry, HolderCounts()) == {}


async def test_cancelled_while_acquiring_leaves_no_slot_behind(
    rate_registry: pykka.ActorRef[RateLimitRegistry],
) -> None:
    limit = RateLimit(1, registry=rate_registry)
    for yields in range(4):  # cancel at different points of the acquire round trip
        task = asyncio.create_task(limit(make_ctx(), accepting(lambda c, s: asyncio.sleep(10))))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with bounded():
                await task
        assert await ask(rate_registry, HolderCounts()) == {}, f"leaked after {yields} yields"


async def test_route_and_path_limits_key_on_the_pattern_and_the_path(
    rate_registry: pykka.ActorRef[RateLimitRegistry],
) -> None:
    route = RouteRateLimit(1, registry=rate_registry)
    path = PerPathRateLimit(1, registry=rate_registry)

    async def probe(ctx: SessionContext, session: FakeSession) -> None:
        with pytest.raises(Rejected) as caught:
            await route(make_ctx(path="/room/2"), accepting())  # same pattern
        assert "route /room/{id}" in caught.value.reason
        await path(make_ctx(path="/room/2"), accepting())  # another path
        with pytest.raises(Rejected):
            await path(make_ctx(path="/room/1"), accepting())

    await route(make_ctx(), accepting(lambda c, s: path(make_ctx(), accepting(probe))))
    assert await ask(rate_registry, HolderCounts()) == {}


async def test_a_middleware_starts_its_own_registry_lazily_and_stops_it() -> None:
    limit = RateLimit(2)
    assert limit.service.started is None
    await limit(make_ctx(), accepting())
    ref = limit.service.started
    assert ref is not None
    assert ref.is_alive()
    await limit.aclose()
    assert not ref.is_alive()


async def test_max_sessions_registers_attaches_and_unregisters() -> None:
    registry = SessionRegistry.start()
    try:
        cap = MaxSessions(1, registry=registry)

        async def inside(ctx: SessionContext, session: FakeSession) -> None:
            info = await ask(registry, LookupSession(ctx.session_id))
            assert info is not None
            assert info.session is session
            assert (info.remote_ip, info.path) == ("10.0.0.1", "/room/1")
            with pytest.raises(Rejected) as caught:
                await cap(make_ctx(), accepting())
            assert caught.value.status == 503
            assert caught.value.headers == (("retry-after", "1"),)

        await cap(make_ctx(), accepting(inside))
        with pytest.raises(RuntimeError):
            await cap(make_ctx(), raising(RuntimeError()))
        assert await ask(registry, CountSessions()) == 0

        async def as_ada(ctx: SessionContext, session: FakeSession) -> None:
            info = await ask(registry, LookupSession(ctx.session_id))
            assert info is not None
            assert info.user == "ada"  # the identity authentication set, for ToUser

        for identity in ("ada", {"sub": "ada", "scope": "chat"}):
            ctx = make_ctx()
            ctx.identity = identity
            await cap(ctx, accepting(as_ada))
    finally:
        await registry.stop(block=False)


# --- TokenBucket and DepthGuard taps ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_token_bucket_drops_the_excess_and_refills(
    metrics: pykka.ActorRef[MetricsCollector],
) -> None:
    clock = Clock()
    bucket_mw = TokenBucket(2, 3, metrics=metrics, clock=clock)
    seen: list[bool] = []

    def traffic(ctx: SessionContext, session: FakeSession) -> None:
        bucket = ctx.get(SESSION_BUCKET)
        s = cast(Session, session)
        seen.extend(bucket.observe(s, DatagramReceived(b"x" * 10)) for _ in range(5))  # burst 3
        clock.now += 1.0  # two tokens back
        stream = cast(Stream, FakeStream(0))
        seen.append(bucket.observe(s, StreamDataReceived(stream, b"", True)))  # a FIN is free
        seen.extend(
            bucket.observe(s, StreamDataReceived(stream, b"x" * 5, False)) for _ in range(3)
        )
        assert bucket.dropped == 3
        assert session.closed_with is None  # drop mode never closes

    await bucket_mw(make_ctx(), accepting(traffic))
    assert seen == [True, True, True, False, False, True, True, True, False]
    snap = await ask(metrics, TakeSnapshot())
    assert snap.value(names.TOKEN_BUCKET_EXCESS.name, {"kind": "datagram", "action": "drop"}) == 2
    assert snap.value(names.TOKEN_BUCKET_EXCESS.name, {"kind": "stream", "action": "drop"}) == 1


async def test_token_bucket_close_mode_closes_with_rate_limited() -> None:
    clock = Clock()

    def traffic(ctx: SessionContext, session: FakeSession) -> None:
        bucket = ctx.get(SESSION_BUCKET)
        assert bucket.observe(cast(Session, session), DatagramReceived(b"x"))
        assert not bucket.observe(cast(Session, session), DatagramReceived(b"x"))
        assert session.closed_with == (CloseCode.RATE_LIMITED, "message rate limit exceeded")

    await TokenBucket(0.001, 1, on_excess="close", clock=clock)(make_ctx(), accepting(traffic))


async def test_token_buckets_are_per_session() -> None:
    clock = Clock()
    mw = TokenBucket(1, 1, clock=clock)
    buckets = []

    def grab(ctx: SessionContext, session: FakeSession) -> None:
        buckets.append(ctx.get(SESSION_BUCKET))
        assert buckets[-1].observe(cast(Session, session), DatagramReceived(b"x"))

    await mw(make_ctx(), accepting(grab))
    await mw(make_ctx(), accepting(grab))
    assert buckets[0] is not buckets[1]


async def test_depth_guard_counts_open_peer_streams(
    metrics: pykka.ActorRef[MetricsCollector],
) -> None:
    def traffic(ctx: SessionContext, session: FakeSession) -> None:
        (tap,) = ctx.taps
        s = cast(Session, session)
        streams = [cast(Stream, FakeStream(n)) for n in range(4)]
        assert [tap.observe(s, StreamOpened(st)) for st in streams[:3]] == [True, True, False]
        tap.observe(s, StreamClosed(streams[2]))  # the refused one: changes nothing
        tap.observe(s, StreamClosed(cast(Stream, FakeStream(99))))  # never counted
        assert not tap.observe(s, StreamOpened(streams[3]))
        tap.observe(s, StreamClosed(streams[0]))
        tap.observe(s, StreamClosed(streams[0]))  # twice: still one slot freed
        assert tap.observe(s, StreamOpened(streams[3]))
        assert not tap.observe(s, StreamOpened(streams[2]))

    await DepthGuard(2, metrics=metrics)(make_ctx(), accepting(traffic))
    snap = await ask(metrics, TakeSnapshot())
    assert snap.total("aiowt_streams_refused_total") == 3
