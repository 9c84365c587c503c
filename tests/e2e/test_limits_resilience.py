"""Resilience and stats end to end: timeouts as the client sees them, Recover, the circuit
breaker's 503 and recovery, and ConcurrencyStats after the sessions end."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import pytest
from structlog.testing import capture_logs

from aiowt.actors import Handler, ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.middleware.chain import CallNext
from aiowt.middleware.limits import MaxSessions
from aiowt.middleware.resilience import (
    CircuitBreaker,
    IdleTimeout,
    Recover,
    SessionTimeoutWithWarning,
    Timeout,
)
from aiowt.middleware.stats import ConcurrencyStats
from aiowt.transport import (
    CloseCode,
    HandshakeError,
    Session,
    SessionContext,
    SessionTap,
    Stream,
)
from aiowt.transport.events import (
    DatagramReceived,
    SessionAccepted,
    SessionClosed,
    SessionEvent,
    StreamDataReceived,
    StreamOpened,
)
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded
from tests.e2e.test_limits_sessions import Ends, Stop, stop

__all__ = ["stop"]  # the autouse fixture, re-used here


async def test_timeout_closes_the_session_with_timeout(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(lambda s: s.use(Timeout(0.2)).route("/echo", Echo))
    started = time.monotonic()
    session = await client(server, "/echo")
    async with bounded():
        info = await session.wait_closed()
    assert (info.code, info.reason) == (CloseCode.TIMEOUT, "session timeout")
    assert time.monotonic() - started >= 0.2


async def test_a_session_that_ends_first_cancels_its_timer(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    ends = Ends()
    server = await make_server(lambda s: s.use(ends, Timeout(30)).route("/echo", Echo))
    session = await client(server, "/echo")
    await session.aclose()
    (ctx,) = await ends.next()
    assert ctx.close_info is not None
    assert ctx.close_info.code == CloseCode.NORMAL  # the client's close, not the timer's
    assert all(not getattr(tap, "_handles", None) for tap in ctx.taps)


async def test_the_warning_datagram_comes_before_the_timeout_close(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(
        lambda s: s.use(SessionTimeoutWithWarning(0.5, 0.3)).route("/echo", Echo)
    )
    session = await client(server, "/echo")
    async with bounded():
        warning = await session.receive_datagram_message()
        info = await session.wait_closed()
    assert warning == {"type": "timeout_warning", "seconds_left": 0.3}
    assert info.code == CloseCode.TIMEOUT


class InputClock(SessionTap):
    """When, on the server's loop clock, the session was accepted, got input, closed."""

    def __init__(self) -> None:
        self.accepted_at = 0.0
        self.inputs: list[float] = []
        self.closed_at: float | None = None

    def observe(self, session: Session, event: SessionEvent) -> bool:
        now = asyncio.get_running_loop().time()
        if isinstance(event, DatagramReceived | StreamOpened | StreamDataReceived):
            self.inputs.append(now)
        elif isinstance(event, SessionAccepted):
            self.accepted_at = now
        elif isinstance(event, SessionClosed):
            self.closed_at = now
        return True


@pytest.mark.parametrize("via", ["datagrams", "stream data"])
async def test_idle_timeout_resets_on_input_and_closes_when_it_stops(
    make_server: ServerFactory, client: ClientFactory, via: str
) -> None:
    """Checked on the server's own record of when input arrived, not on the test's timing:
    the close never comes sooner than `idle` after the last input (every input re-arms
    the timer), and it comes once input stops. A machine too busy to keep the session
    talking is a legitimate close; the test then tries again, a bounded number of times."""
    idle = 0.5
    clocks: list[InputClock] = []

    async def clocked(ctx: SessionContext, call_next: CallNext) -> None:
        clocks.append(InputClock())
        ctx.taps.append(clocks[-1])
        await call_next(ctx)

    server = await make_server(lambda s: s.use(IdleTimeout(idle), clocked).route("/echo", Echo))
    loop = asyncio.get_running_loop()
    for _ in range(3):
        session = await client(server, "/echo")
        stream = session.open_stream()
        started = loop.time()
        # Talk for three idle periods, each input echoed before the next one goes.
        while loop.time() - started < 3 * idle and not session.closed:
            async with bounded():
                if via == "datagrams":
                    session.send_datagram(b"ping")
                    await session.receive_datagram()
                else:
                    stream.write(b"ping")
                    await stream.read(4)
            await asyncio.sleep(idle / 10)
        async with bounded():
            info = await session.wait_closed()
        assert (info.code, info.reason) == (CloseCode.IDLE_TIMEOUT, "idle timeout")
        clock = clocks[-1]
        assert clock.closed_at is not None
        # Never early: the timer slack aside, `idle` passed since the last input.
        assert clock.closed_at - max(clock.inputs) >= idle * 0.95
        if max(clock.inputs) - clock.accepted_at >= 2 * idle:
            return  # the inputs kept it open past two idle periods: resets seen
    pytest.fail("no attempt kept its session talking for two idle periods")


class Faulty(Handler):
    async def on_message(self, message: object, stream: Stream | None) -> None:
        if message == "crash":
            raise ValueError("bug in a stream handler")


async def test_recover_contains_a_handler_failure_and_logs_it_with_the_ids(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    ends = Ends()
    server = await make_server(lambda s: s.use(ends, Recover()).route("/f", Faulty))
    bystander = await client(server, "/f")
    victim = await client(server, "/f")
    with capture_logs() as logs:
        victim.open_stream().send_message("crash")
        async with bounded():
            info = await victim.wait_closed()
        (ctx,) = await ends.next()
    assert info.code == CloseCode.INTERNAL_ERROR
    failures = [e for e in logs if e["event"] == "session failed"]
    assert len(failures) == 1, "Recover logged it once, and the server saw nothing to log"
    assert failures[0]["session_id"] == ctx.session_id
    assert failures[0]["path"] == "/f"
    assert isinstance(failures[0]["exc_info"], ValueError)
    assert not bystander.closed


async def test_recover_turns_a_middleware_crash_into_a_500(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    async def broken(ctx: SessionContext, call_next: CallNext) -> None:
        raise KeyError("config")

    server = await make_server(lambda s: s.use(Recover(), broken).route("/echo", Echo))
    with capture_logs(), pytest.raises(HandshakeError) as caught:
        await client(server, "/echo")
    assert (caught.value.status, caught.value.reason) == (500, "internal error")


class Flaky(Handler):
    failing: ClassVar[bool] = True

    async def on_start(self) -> None:
        if Flaky.failing:
            raise RuntimeError("backend down")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_breaker_opens_refuses_with_503_then_probes_and_closes(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    Flaky.failing = True
    clock = FakeClock()
    metrics = stop(MetricsCollector.start())
    breaker = stop(
        CircuitBreaker(
            threshold=2, window=60, cooldown=10, half_open_max=1, clock=clock, metrics=metrics
        )
    )
    ends = Ends()
    server = await make_server(lambda s: s.use(ends, Recover(), breaker).route("/f", Flaky))

    with capture_logs():
        for _ in range(2):
            session = await client(server, "/f")
            async with bounded():
                assert (await session.wait_closed()).code == CloseCode.INTERNAL_ERROR
            await ends.next()
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/f")
    assert (caught.value.status, caught.value.reason) == (503, "circuit open")
    assert ("retry-after", "10") in caught.value.headers

    Flaky.failing = False  # the backend is back; the breaker does not know yet
    clock.now += 10  # the cooldown passes: half-open, one probe at a time
    probe = await client(server, "/f")
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/f")
    assert caught.value.status == 503
    await ends.next(2)  # the two refused ones
    await probe.aclose()  # a clean end: the probe succeeded
    await ends.next()
    await client(server, "/f")
    await client(server, "/f")  # closed again: no probe limit
    snapshot = await ask(metrics, TakeSnapshot())
    closed = {"breaker": "default", "state": "closed"}
    assert snapshot.value(names.BREAKER_STATE.name, closed) == 1
    refused = {"route": "/f", "middleware": "CircuitBreaker", "status": "503"}
    assert snapshot.value(names.REJECTIONS.name, refused) == 2


async def test_concurrency_stats_after_sessions_end(
    stop: Stop, make_server: ServerFactory, client: ClientFactory
) -> None:
    stats = stop(ConcurrencyStats())
    ends = Ends()
    cap = stop(MaxSessions(2))
    server = await make_server(lambda s: s.use(ends, stats, cap).route("/echo", Echo))
    first = await client(server, "/echo")
    second = await client(server, "/echo")
    with pytest.raises(HandshakeError):
        await client(server, "/echo")
    await first.aclose()
    await second.abort()
    await ends.next(3)
    counts = await stats.read()
    assert (counts.active, counts.peak, counts.accepted, counts.rejected) == (0, 2, 2, 1)
