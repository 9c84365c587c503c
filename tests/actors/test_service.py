"""Supervision: a failing message never kills a shared service, and changes nothing.

pykka stops an actor whose `tell` handler raises; `Service` logs it and keeps serving.
Each real service is fed bad messages (by tell and by ask) and must answer the next
good message from the state it had before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest
from structlog.testing import capture_logs

from aiowt.actors import (
    LoopActor,
    Request,
    Service,
    ServiceHandle,
    UnknownMessage,
    ask,
    ask_future,
    handles,
    tell_quietly,
)
from aiowt.actors.breaker import (
    Admit,
    Breaker,
    BreakerState,
    GetBreakerStatus,
    SessionFailed,
)
from aiowt.actors.metrics import AddGauge, Inc, MetricsCollector, Observe, SetGauge, TakeSnapshot
from aiowt.actors.ratelimit import Acquire, HolderCounts, RateLimitRegistry, Release
from aiowt.actors.sessions import (
    Broadcast,
    CountSessions,
    ListSessions,
    Multicast,
    Register,
    SessionRegistry,
    Unregister,
)
from aiowt.transport.errors import UsageError
from tests.conftest import bounded


@dataclass(frozen=True, slots=True)
class Put(Request[int]):
    value: int


@dataclass(frozen=True, slots=True)
class Explode(Request[None]):
    pass


class Box(Service):
    def __init__(self) -> None:
        super().__init__()
        self.values: list[int] = []

    @handles(Put)
    def _put(self, message: Put) -> int:
        if message.value < 0:
            raise ValueError("negative")
        self.values.append(message.value)
        return len(self.values)

    @handles(Explode)
    def _explode(self, message: Explode) -> None:
        raise RuntimeError("boom")


@dataclass(frozen=True, slots=True)
class Stranger:
    pass


@pytest.fixture
async def box() -> AsyncIterator[pykka.ActorRef[Box]]:
    ref = Box.start()
    yield ref
    await ref.stop(block=False)


async def test_a_failing_tell_is_logged_and_the_service_keeps_serving(
    box: pykka.ActorRef[Box],
) -> None:
    with capture_logs() as logs:
        box.tell(Explode())
        box.tell(Put(-1))
        async with bounded():
            assert await ask(box, Put(7)) == 1
    assert box.is_alive()
    failures = [e for e in logs if e["event"].startswith("message failed")]
    assert [e["message"] for e in failures] == ["Explode", "Put"]
    assert all(e["log_level"] == "error" and e["exc_info"] for e in failures)


async def test_a_failing_ask_returns_the_error_and_the_service_keeps_serving(
    box: pykka.ActorRef[Box],
) -> None:
    async with bounded():
        with pytest.raises(RuntimeError, match="boom"):
            await ask(box, Explode())
        assert await ask(box, Put(1)) == 1


async def test_an_unknown_message_is_a_clear_usage_error(box: pykka.ActorRef[Box]) -> None:
    async with bounded():
        with pytest.raises(UnknownMessage, match="Box has no handler for Stranger") as caught:
            await box.ask(Stranger(), block=False)
        assert isinstance(caught.value, UsageError)
        box.tell(Stranger())
        box.tell("a string")
        assert await ask(box, Put(1)) == 1
    assert box.is_alive()


async def test_a_failed_message_is_counted(box: pykka.ActorRef[Box]) -> None:
    box.tell(Explode())
    with pytest.raises(RuntimeError):
        await ask(box, Explode())
    actor = box._actor_weakref()
    assert isinstance(actor, Box)
    async with bounded():
        await ask(box, Put(1))  # both failures were handled before this
    assert actor.failed_messages == 2


async def test_a_plain_loop_actor_would_have_died() -> None:
    """The contrast that makes Service necessary: pykka's rule stops the actor."""

    class Plain(LoopActor):
        register_globally = False

        def on_receive(self, message: Any) -> Any:
            raise RuntimeError("boom")

    ref = Plain.start()
    actor = ref._actor_weakref()
    assert actor is not None
    task = actor._actor_task
    assert task is not None
    with capture_logs():
        ref.tell("x")
        async with bounded():
            await task  # the actor's loop ends: it stopped
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("y")


async def test_services_expose_nothing_to_proxies(box: pykka.ActorRef[Box]) -> None:
    with pytest.raises(AttributeError):
        box.proxy()._put  # noqa: B018  (private handlers are not reachable by proxy)


async def test_thread_asks_and_tells_against_a_service(box: pykka.ActorRef[Box]) -> None:
    results: list[object] = []

    def worker() -> None:
        box.tell(Explode())
        results.append(ask_future(box, Put(3)).get(timeout=5))
        try:
            ask_future(box, Explode()).get(timeout=5)
        except RuntimeError as error:
            results.append(str(error))

    thread = threading.Thread(target=worker)
    thread.start()
    async with bounded():
        await asyncio.to_thread(thread.join, 5)
    assert results == [1, "boom"]
    assert box.is_alive()


# --- every real service: bad messages change nothing ----------------------------------------

BAD_COMMON: list[object] = [Stranger(), None, 42, Put(1)]


async def _feed_bad(ref: pykka.ActorRef[Any], bad: list[object]) -> None:
    """Each bad message by tell and by ask; the asks must fail with an error, not hang."""
    with capture_logs():
        for message in bad:
            ref.tell(message)
        for message in bad:
            with pytest.raises(Exception):  # noqa: B017,PT011 (any error, as long as it is one)
                async with bounded():
                    await ref.ask(message, block=False)
    assert ref.is_alive()


async def test_rate_limit_registry_survives_bad_messages_with_its_counts_intact() -> None:
    ref = RateLimitRegistry.start()
    try:
        assert await ask(ref, Acquire("ip", "1.2.3.4", "s1", 2))
        before = await ask(ref, HolderCounts())
        await _feed_bad(
            ref,
            [
                *BAD_COMMON,
                Acquire("ip", "1.2.3.4", "s2", 0),  # limit 0
                Acquire("ip", "1.2.3.4", "s2", True),  # a bool is not a limit
                Acquire("ip", 1234, "s2", 2),  # type: ignore[arg-type]
                Release("ip", "1.2.3.4", None),  # type: ignore[arg-type]
            ],
        )
        assert await ask(ref, HolderCounts()) == before
        assert await ask(ref, Acquire("ip", "1.2.3.4", "s2", 2))
        assert not await ask(ref, Acquire("ip", "1.2.3.4", "s3", 2))
    finally:
        await ref.stop(block=False)


async def test_session_registry_survives_bad_messages_with_its_sessions_intact() -> None:
    ref = SessionRegistry.start()
    try:
        assert await ask(ref, Register("a", limit=2))
        await _feed_bad(
            ref,
            [
                *BAD_COMMON,
                Register(7, limit=2),  # type: ignore[arg-type]
                Register("b", limit="2"),  # type: ignore[arg-type]
                Unregister(None),  # type: ignore[arg-type]
                Broadcast(object()),  # cannot be encoded
                Broadcast("x", via="carrier pigeon"),  # type: ignore[arg-type]
                Multicast("a", "x"),  # a str is not a collection of ids
            ],
        )
        assert [info.session_id for info in await ask(ref, ListSessions())] == ["a"]
        assert await ask(ref, Register("b", limit=2))
        assert not await ask(ref, Register("c", limit=2))
        assert await ask(ref, CountSessions()) == 2
    finally:
        await ref.stop(block=False)


async def test_metrics_collector_survives_bad_messages_with_its_metrics_intact() -> None:
    ref = MetricsCollector.start(max_metrics=3)
    try:
        ref.tell(Inc("requests_total", 2, labels={"route": "/a"}))
        ref.tell(AddGauge("active", 1, peak="active_peak"))
        before = await ask(ref, TakeSnapshot())
        await _feed_bad(
            ref,
            [
                *BAD_COMMON,
                Inc("requests_total", -1, labels={"route": "/a"}),  # counters only go up
                Inc("requests_total", "1"),  # type: ignore[arg-type]
                Inc("requests_total", float("nan")),
                Inc("bad name!"),
                Inc("requests_total", labels={"route": 1}),  # type: ignore[dict-item]
                Inc("requests_total", labels={"__reserved": "x"}),
                SetGauge("requests_total", 3),  # a counter, not a gauge
                AddGauge("active", 1, peak="requests_total"),  # peak is a counter
                AddGauge("active", 1, peak="active"),  # its own peak
                AddGauge("new_gauge", 1, peak="new_peak"),  # two new metrics, one slot left
                Observe("latency", 1.0, buckets=(2.0, 1.0)),  # not increasing
                Observe("latency", 1.0, buckets=(1.0, float("inf"))),
            ],
        )
        after = await ask(ref, TakeSnapshot())
        assert after == before
        assert "new_gauge" not in after.families
        ref.tell(Inc("requests_total", labels={"route": "/a"}))
        assert (await ask(ref, TakeSnapshot())).value("requests_total", {"route": "/a"}) == 3
    finally:
        await ref.stop(block=False)


async def test_circuit_breaker_survives_bad_messages_and_a_broken_clock() -> None:
    now = [0.0]
    broken = [False]

    def clock() -> float:
        if broken[0]:
            return float("nan")
        return now[0]

    ref = Breaker.start(threshold=2, window=10, cooldown=5, clock=clock)
    try:
        assert await ask(ref, SessionFailed()) is BreakerState.CLOSED
        await _feed_bad(ref, [*BAD_COMMON, SessionFailed(probe_id="1")])  # type: ignore[arg-type]
        broken[0] = True
        await _feed_bad(ref, [SessionFailed(), Admit()])
        broken[0] = False
        status = await ask(ref, GetBreakerStatus())
        assert (status.state, status.failures) == (BreakerState.CLOSED, 1)
        assert await ask(ref, SessionFailed()) is BreakerState.OPEN
    finally:
        await ref.stop(block=False)


# --- ServiceHandle ------------------------------------------------------------------------


async def test_service_handle_starts_lazily_restarts_and_stops_only_its_own() -> None:
    handle: ServiceHandle[Box] = ServiceHandle(None, Box.start, "box")
    assert handle.started is None
    assert "not started" in repr(handle)
    first = handle.ref()
    assert handle.ref() is first
    assert "started" in repr(handle)
    await first.stop(block=False)
    with capture_logs() as logs:
        second = handle.ref()
    assert second is not first
    assert second.is_alive()
    assert logs[0]["event"].startswith("service had stopped")
    await handle.stop()
    assert not second.is_alive()
    assert handle.started is None

    given = Box.start()
    try:
        handle = ServiceHandle(given, Box.start, "box")
        assert handle.ref() is given
        assert repr(handle) == "ServiceHandle(box, given)"
        await handle.stop()
        assert given.is_alive()  # not ours to stop
    finally:
        await given.stop(block=False)


def test_service_handle_refuses_something_that_is_not_a_ref() -> None:
    with pytest.raises(UsageError, match="ActorRef"):
        ServiceHandle("registry", Box.start, "registry")  # type: ignore[arg-type]


async def test_tell_quietly_tolerates_none_and_stopped_services() -> None:
    ref = Box.start()
    assert tell_quietly(ref, Put(1))
    await ref.stop(block=False)
    assert not tell_quietly(ref, Put(1))
    assert not tell_quietly(None, Put(1))
