"""The limits, resilience and stats middleware without sockets: options, reprs, the
release paths, tap arithmetic, and outcome classification, against real actors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pykka
import pytest
from structlog.testing import capture_logs

from aiowt.actors import Breaker as BreakerActor
from aiowt.actors import ask
from aiowt.actors import metric_names as names
from aiowt.actors.breaker import BreakerStatus, GetBreakerStatus
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
from aiowt.middleware.resilience import (
    CircuitBreaker,
    IdleTimeout,
    Recover,
    SessionTimeoutWithWarning,
    Timeout,
)
from aiowt.middleware.stats import BANDWIDTH, Bandwidth, ConcurrencyStats
from aiowt.transport.codes import CloseCode
from aiowt.transport.context import CloseInfo, SessionContext
from aiowt.transport.errors import Rejected, SessionClosedError, UsageError
from aiowt.transport.events import (
    DatagramReceived,
    DatagramSent,
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


@pytest.fixture
async def metrics() -> AsyncIterator[pykka.ActorRef[MetricsCollector]]:
    ref = MetricsCollector.start()
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
        lambda: Timeout(0),
        lambda: Timeout(float("nan")),
        lambda: IdleTimeout(-1),
        lambda: SessionTimeoutWithWarning(1, 1),
        lambda: SessionTimeoutWithWarning(1, 0),
        lambda: CircuitBreaker(threshold=0),
        lambda: CircuitBreaker(cooldown=0),
        lambda: CircuitBreaker(failure_codes="abc"),
        lambda: ConcurrencyStats(metrics="x"),
        lambda: Bandwidth(metrics=3),
    ],
)
def test_options_are_validated_at_construction(build: Callable[[], object]) -> None:
    with pytest.raises(UsageError):
        build()


async def test_a_breaker_ref_and_breaker_settings_are_exclusive() -> None:
    ref = BreakerActor.start()
    try:
        with pytest.raises(UsageError, match="either a breaker ref or its settings"):
            CircuitBreaker(threshold=3, breaker=ref)
        given = CircuitBreaker(breaker=ref)
        assert repr(given) == "CircuitBreaker(breaker=<given>, name='default')"
    finally:
        await ref.stop(block=False)


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
    assert repr(Timeout(30)) == "Timeout(30)"
    assert repr(IdleTimeout(0.5)) == "IdleTimeout(0.5)"
    assert repr(SessionTimeoutWithWarning(60, 10)) == (
        "SessionTimeoutWithWarning(timeout=60, warning_before=10)"
    )
    assert repr(Recover()) == "Recover()"
    assert repr(CircuitBreaker(threshold=2, cooldown=1)) == (
        "CircuitBreaker(threshold=2, window=60, cooldown=1, half_open_max=1, name='default')"
    )
    assert repr(ConcurrencyStats()).startswith("ConcurrencyStats(metrics=ServiceHandle(")
    assert repr(Bandwidth()).startswith("Bandwidth(metrics=ServiceHandle(")


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


# --- Recover and the CircuitBreaker middleware -------------------------------------------------


async def test_recover_turns_a_failure_before_acceptance_into_a_500() -> None:
    with capture_logs() as logs, pytest.raises(Rejected) as caught:
        await Recover()(make_ctx(), raising(KeyError("missing")))
    assert (caught.value.status, caught.value.reason) == (500, "internal error")
    assert isinstance(caught.value.__cause__, KeyError)
    assert logs[0]["event"] == "middleware failed before acceptance"


async def test_recover_lets_rejections_through() -> None:
    with pytest.raises(Rejected) as caught:
        await Recover()(make_ctx(), raising(Rejected(401, "who are you")))
    assert caught.value.status == 401


async def test_recover_swallows_a_session_failure_and_closes_the_session(
    metrics: pykka.ActorRef[MetricsCollector],
) -> None:
    sessions: list[FakeSession] = []

    async def crash(ctx: SessionContext, session: FakeSession) -> None:
        sessions.append(session)
        raise ValueError("bug in the after-code")

    ctx = make_ctx()
    with capture_logs() as logs:
        await Recover(metrics=metrics)(ctx, accepting(crash))
    assert sessions[0].closed_with == (CloseCode.INTERNAL_ERROR, "internal error")
    (entry,) = logs
    assert entry["event"] == "session failed"
    assert entry["session_id"] == ctx.session_id
    assert isinstance(entry["exc_info"], ValueError)
    snap = await ask(metrics, TakeSnapshot())
    errors = {"route": "/room/{id}", "stage": "session"}
    assert snap.value(names.SESSION_ERRORS.name, errors) == 1


@pytest.mark.parametrize(
    ("ending", "failures"),
    [
        (raising(RuntimeError("handler bug")), 1),
        (accepting(close=CloseInfo(CloseCode.INTERNAL_ERROR, "internal error", False)), 1),
        (accepting(close=CloseInfo(CloseCode.INTERNAL_ERROR, "client bug", True)), 0),
        (accepting(close=CloseInfo(CloseCode.ABORTED, "vanished", True)), 0),
        (accepting(close=CloseInfo(CloseCode.MALFORMED_MESSAGE, "bad frame", False)), 0),
        (accepting(close=CloseInfo(CloseCode.GOING_AWAY, "shutdown", False)), 0),
        (accepting(close=CloseInfo(4000, "app", False)), 0),
        (raising(Rejected(429, "later")), 0),
        (raising(SessionClosedError(CloseCode.RATE_LIMITED, "flood")), 0),
    ],
    ids=[
        "exception",
        "server-internal-error",
        "peer-internal-error",
        "aborted",
        "peer-misbehaved",
        "going-away",
        "app-code",
        "rejected-later",
        "sent-on-a-closed-session",
    ],
)
async def test_breaker_failures_are_exceptions_and_server_error_closes(
    ending: CallNext, failures: int
) -> None:
    breaker = CircuitBreaker(threshold=5, window=60)
    try:
        with contextlib.suppress(RuntimeError, Rejected, SessionClosedError):
            await breaker(make_ctx(), ending)
        ref = breaker.service.started
        assert ref is not None
        status = await ask(ref, GetBreakerStatus())
        assert status == BreakerStatus(status.state, failures, 0)
    finally:
        await breaker.aclose()


async def test_an_open_breaker_refuses_with_503_and_retry_after(
    metrics: pykka.ActorRef[MetricsCollector],
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=4.5, metrics=metrics, clock=clock)
    try:
        with pytest.raises(RuntimeError):
            await breaker(make_ctx(), raising(RuntimeError()))
        ref = breaker.service.started
        assert ref is not None
        await ask(ref, GetBreakerStatus())  # the failure (a tell) is handled at t=0
        clock.now += 1
        with pytest.raises(Rejected) as caught:
            await breaker(make_ctx(), accepting())
        assert (caught.value.status, caught.value.reason) == (503, "circuit open")
        assert caught.value.headers == (("retry-after", "4"),)
        snap = await ask(metrics, TakeSnapshot())
        labels = {"route": "/room/{id}", "middleware": "CircuitBreaker", "status": "503"}
        assert snap.value(names.REJECTIONS.name, labels) == 1
    finally:
        await breaker.aclose()


# --- stats ------------------------------------------------------------------------------------


async def test_concurrency_stats_count_active_peak_accepted_rejected() -> None:
    stats = ConcurrencyStats()
    try:

        def await_nested(depth: int) -> Callable[[SessionContext, FakeSession], Any]:
            async def during(ctx: SessionContext, session: FakeSession) -> None:
                if depth:
                    await stats(make_ctx(), accepting(await_nested(depth - 1)))

            return during

        await stats(make_ctx(), accepting(await_nested(2)))  # three at once at the deepest
        with pytest.raises(Rejected):
            await stats(make_ctx(), raising(Rejected(429, "no")))
        counts = await stats.read()
        assert (counts.active, counts.peak, counts.accepted, counts.rejected) == (0, 3, 3, 1)
    finally:
        await stats.aclose()


async def test_bandwidth_reads_the_transport_counters() -> None:
    bandwidth = Bandwidth()
    try:

        def traffic(ctx: SessionContext, session: FakeSession) -> None:
            # What the transport does for each payload: count it, then show the taps.
            session.bytes_in, session.bytes_out = 1200, 345
            for tap in ctx.taps:
                tap.observe(cast(Session, session), DatagramReceived(b"x" * 1200))
                tap.observe(cast(Session, session), DatagramSent(b"x" * 345))
            counter = ctx.get(BANDWIDTH)
            assert (counter.bytes_in, counter.bytes_out) == (1200, 345)

        await bandwidth(make_ctx(), accepting(traffic))
        with pytest.raises(Rejected):  # never accepted: nothing to count
            await bandwidth(make_ctx(), raising(Rejected(403, "no")))
        counts = await bandwidth.read()
        assert (counts.bytes_in, counts.bytes_out) == (1200, 345)
    finally:
        await bandwidth.aclose()
