"""The resilience middleware without sockets: options, reprs, and outcome classification
by Recover and the CircuitBreaker middleware, against real actors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pykka
import pytest
from structlog.testing import capture_logs

from aiowt.actors import Breaker as BreakerActor
from aiowt.actors import ask
from aiowt.actors import metric_names as names
from aiowt.actors.breaker import BreakerStatus, GetBreakerStatus
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.middleware.chain import CallNext
from aiowt.middleware.resilience import (
    CircuitBreaker,
    IdleTimeout,
    Recover,
    SessionTimeoutWithWarning,
    Timeout,
)
from aiowt.transport.codes import CloseCode
from aiowt.transport.context import CloseInfo, SessionContext
from aiowt.transport.errors import Rejected, SessionClosedError, UsageError
from tests.middleware.test_limits import (
    Clock,
    FakeSession,
    accepting,
    make_ctx,
    raising,
)

# --- options and reprs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Timeout(0),
        lambda: Timeout(float("nan")),
        lambda: IdleTimeout(-1),
        lambda: SessionTimeoutWithWarning(1, 1),
        lambda: SessionTimeoutWithWarning(1, 0),
        lambda: CircuitBreaker(threshold=0),
        lambda: CircuitBreaker(cooldown=0),
        lambda: CircuitBreaker(failure_codes="abc"),
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
    assert repr(Timeout(30)) == "Timeout(30)"
    assert repr(IdleTimeout(0.5)) == "IdleTimeout(0.5)"
    assert repr(SessionTimeoutWithWarning(60, 10)) == (
        "SessionTimeoutWithWarning(timeout=60, warning_before=10)"
    )
    assert repr(Recover()) == "Recover()"
    assert repr(CircuitBreaker(threshold=2, cooldown=1)) == (
        "CircuitBreaker(threshold=2, window=60, cooldown=1, half_open_max=1, name='default')"
    )


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
