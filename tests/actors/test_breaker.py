"""`Breaker` actor: transitions on a fake clock, and a stateful model check whose
bursts of sessions run concurrently from tasks and threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pykka
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from aiowt.actors import ask
from aiowt.actors.breaker import (
    Admission,
    Admit,
    Breaker,
    BreakerState,
    BreakerStatus,
    GetBreakerStatus,
    ResetBreaker,
    SessionFailed,
    SessionNotRun,
    SessionSucceeded,
)
from aiowt.actors.metric_names import BREAKER_FAILURES, BREAKER_STATE, BREAKER_TRANSITIONS
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.transport.errors import UsageError
from tests.actors.test_service_harness import (
    TIMEOUT,
    Failed,
    Program,
    check_history,
    drive,
    recording,
    take_history,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def breaker(clock: FakeClock) -> AsyncIterator[pykka.ActorRef[Breaker]]:
    ref = Breaker.start(
        threshold=3, window=10, cooldown=5, half_open_max=2, probe_timeout=8, clock=clock
    )
    yield ref
    await ref.stop(block=False)


async def test_threshold_failures_within_the_window_open_the_circuit(
    breaker: pykka.ActorRef[Breaker], clock: FakeClock
) -> None:
    assert await ask(breaker, Admit()) == Admission(True, CLOSED)
    for expected in (CLOSED, CLOSED, OPEN):
        clock.now += 1
        assert await ask(breaker, SessionFailed()) is expected
    clock.now += 2
    assert await ask(breaker, Admit()) == Admission(False, OPEN, retry_after=3.0)


async def test_failures_decay_out_of_the_window(
    breaker: pykka.ActorRef[Breaker], clock: FakeClock
) -> None:
    for _ in range(10):
        assert await ask(breaker, SessionFailed()) is CLOSED
        clock.now += 6  # two failures never fall within one 10 s window with a third
        assert (await ask(breaker, GetBreakerStatus())).failures <= 2
    assert await ask(breaker, GetBreakerStatus()) == BreakerStatus(CLOSED, 1, 0)
    clock.now += 10
    assert await ask(breaker, GetBreakerStatus()) == BreakerStatus(CLOSED, 0, 0)


async def _trip(breaker: pykka.ActorRef[Breaker]) -> None:
    for _ in range(3):
        await ask(breaker, SessionFailed())
    assert (await ask(breaker, GetBreakerStatus())).state is OPEN


async def test_half_open_admits_a_limited_number_of_probes(
    breaker: pykka.ActorRef[Breaker], clock: FakeClock
) -> None:
    await _trip(breaker)
    clock.now += 5
    first = await ask(breaker, Admit())
    second = await ask(breaker, Admit())
    assert (first.allowed, first.state, second.allowed) == (True, HALF_OPEN, True)
    assert first.probe_id is not None
    assert second.probe_id is not None
    assert first.probe_id != second.probe_id
    refused = await ask(breaker, Admit())
    assert (refused.allowed, refused.retry_after) == (False, 8.0)
    # A probe that never ran gives its slot back without deciding anything.
    assert await ask(breaker, SessionNotRun(first.probe_id)) is HALF_OPEN
    third = await ask(breaker, Admit())
    assert third.allowed
    # Outcomes of sessions that are not probes do not decide in half-open.
    assert await ask(breaker, SessionFailed()) is HALF_OPEN
    assert await ask(breaker, SessionSucceeded(second.probe_id)) is CLOSED
    # The third probe is now stale: its failure counts as an ordinary one.
    assert await ask(breaker, SessionFailed(third.probe_id)) is CLOSED
    assert (await ask(breaker, GetBreakerStatus())).failures == 1


async def test_a_failing_probe_reopens_for_a_new_cooldown(
    breaker: pykka.ActorRef[Breaker], clock: FakeClock
) -> None:
    await _trip(breaker)
    clock.now += 5
    probe = await ask(breaker, Admit())
    clock.now += 1
    assert await ask(breaker, SessionFailed(probe.probe_id)) is OPEN
    assert await ask(breaker, Admit()) == Admission(False, OPEN, retry_after=5.0)


async def test_a_long_lived_probe_counts_as_a_success(
    breaker: pykka.ActorRef[Breaker], clock: FakeClock
) -> None:
    await _trip(breaker)
    clock.now += 5
    probe = await ask(breaker, Admit())
    clock.now += 7.9
    assert (await ask(breaker, GetBreakerStatus())).state is HALF_OPEN
    clock.now += 0.1
    assert (await ask(breaker, GetBreakerStatus())).state is CLOSED
    # Its end, whatever it is, is an ordinary outcome now.
    assert await ask(breaker, SessionFailed(probe.probe_id)) is CLOSED


async def test_reset_closes_and_forgets(breaker: pykka.ActorRef[Breaker], clock: FakeClock) -> None:
    await _trip(breaker)
    assert await ask(breaker, ResetBreaker()) is CLOSED
    assert await ask(breaker, GetBreakerStatus()) == BreakerStatus(CLOSED, 0, 0)


async def test_state_changes_are_reported_to_the_metrics(clock: FakeClock) -> None:
    metrics = MetricsCollector.start()
    ref = Breaker.start(threshold=1, cooldown=5, clock=clock, metrics=metrics, name="db")
    try:
        snap = await ask(metrics, TakeSnapshot())  # on_start's gauge came first
        await ask(ref, SessionFailed())
        clock.now += 5
        probe = await ask(ref, Admit())
        await ask(ref, SessionSucceeded(probe.probe_id))
        await ask(ref, GetBreakerStatus())  # the breaker's tells are in the collector's inbox
        snap = await ask(metrics, TakeSnapshot())
        states = {
            s.value: snap.value(BREAKER_STATE.name, {"breaker": "db", "state": s.value})
            for s in BreakerState
        }
        assert states == {"closed": 1, "open": 0, "half_open": 0}
        for to in ("open", "half_open", "closed"):
            assert snap.value(BREAKER_TRANSITIONS.name, {"breaker": "db", "to": to}) == 1
        assert snap.value(BREAKER_FAILURES.name, {"breaker": "db"}) == 0
    finally:
        await ref.stop(block=False)
        await metrics.stop(block=False)


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 0},
        {"threshold": 1.5},
        {"window": 0},
        {"cooldown": -1},
        {"cooldown": float("inf")},
        {"half_open_max": 0},
        {"probe_timeout": 0},
        {"clock": 3},
    ],
)
def test_settings_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        Breaker(**options)


# --- the stateful model check ---------------------------------------------------------------

SETTINGS = {"threshold": 3, "window": 10.0, "cooldown": 5.0, "half_open_max": 2}
PROBE_TIMEOUT = 8.0


class BreakerModel:
    """The rules of `aiowt.actors.breaker`, written out again, sequentially."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.state = CLOSED
        self.failures: list[float] = []
        self.opened_at = 0.0
        self.probes: dict[int, float] = {}
        self.next_probe = 1

    def _advance(self) -> float:
        now = self.clock.now
        if self.state is OPEN and now >= self.opened_at + SETTINGS["cooldown"]:
            self.state = HALF_OPEN
        if self.state is HALF_OPEN and any(now >= t + PROBE_TIMEOUT for t in self.probes.values()):
            self._close()
        return now

    def _close(self) -> None:
        self.state, self.failures, self.probes = CLOSED, [], {}

    def _open(self, now: float) -> None:
        self.state, self.failures, self.probes, self.opened_at = OPEN, [], {}, now

    def apply(self, message: Any) -> object:
        if isinstance(message, Admit):
            now = self._advance()
            if self.state is CLOSED:
                return Admission(True, CLOSED)
            if self.state is OPEN:
                left = self.opened_at + SETTINGS["cooldown"] - now
                return Admission(False, OPEN, retry_after=left)
            if len(self.probes) < SETTINGS["half_open_max"]:
                probe, self.next_probe = self.next_probe, self.next_probe + 1
                self.probes[probe] = now
                return Admission(True, HALF_OPEN, probe_id=probe)
            oldest = min(self.probes.values())
            return Admission(False, HALF_OPEN, retry_after=max(0.0, oldest + PROBE_TIMEOUT - now))
        if isinstance(message, SessionSucceeded | SessionFailed | SessionNotRun):
            now = self._advance()
            was_probe = self.probes.pop(message.probe_id, None) is not None  # type: ignore[arg-type]
            if isinstance(message, SessionSucceeded) and was_probe:
                self._close()
            elif isinstance(message, SessionFailed):
                if was_probe:
                    self._open(now)
                elif self.state is CLOSED:
                    horizon = now - SETTINGS["window"]
                    self.failures = [f for f in [*self.failures, now] if f > horizon]
                    if len(self.failures) >= SETTINGS["threshold"]:
                        self._open(now)
            return self.state
        if isinstance(message, GetBreakerStatus):
            now = self._advance()
            return BreakerStatus(self.state, self._in_window(now), len(self.probes))
        if isinstance(message, ResetBreaker):
            self._close()
            return self.state
        return Failed("UnknownMessage")

    def _in_window(self, now: float) -> int:
        return sum(1 for f in self.failures if f > now - SETTINGS["window"])

    def view(self) -> object:
        opened = self.opened_at if self.state is not CLOSED else None
        return (self.state, self._in_window(self.clock.now), sorted(self.probes), opened)


def breaker_view(actor: Breaker) -> object:
    now = actor._clock()
    in_window = sum(1 for f in actor._failures if f > now - actor.window)
    opened = actor._opened_at if actor._state is not CLOSED else None
    return (actor._state, in_window, sorted(actor._probes), opened)


def session(kind: str, by_tell: bool, lingering: list[int | None]) -> Program:
    """Admit, then report (or linger: report in a later step)."""
    admission = yield Admit(), "ask"
    if not isinstance(admission, Admission) or not admission.allowed:
        return
    outcome = {"ok": SessionSucceeded, "fail": SessionFailed, "not_run": SessionNotRun}.get(kind)
    if outcome is None:
        lingering.append(admission.probe_id)
        return
    yield outcome(admission.probe_id), "tell" if by_tell else "ask"


def send(message: object) -> Program:
    yield message, "ask"


class LoopThread:
    """An event loop in a thread of its own: the actor's home across the machine's steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 3)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


kinds = st.tuples(st.sampled_from(["ok", "fail", "fail", "not_run", "linger"]), st.booleans())


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model = BreakerModel(self.clock)
        self.home = LoopThread()
        self.lingering: list[int | None] = []

        async def start() -> pykka.ActorRef[Breaker]:
            return recording(Breaker, breaker_view).start(
                **SETTINGS, probe_timeout=PROBE_TIMEOUT, clock=self.clock
            )

        self.ref = self.home.call(start())

    def _run(self, tasks: list[Program], threads: list[Program]) -> None:
        async def go() -> None:
            sents = await drive(self.ref, tasks, threads)
            # The state after every message, in the actor's own order, against the model.
            check_history(await take_history(self.ref), sents, self.model)

        self.home.call(go())

    @rule(seconds=st.sampled_from([1.0, 2.5, 5.0, 5.0, 8.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds  # between bursts: no message is in flight

    @rule(
        tasks=st.lists(kinds, min_size=1, max_size=6),
        threads=st.lists(kinds, max_size=2),
    )
    def sessions(self, tasks: list[tuple[str, bool]], threads: list[tuple[str, bool]]) -> None:
        self._run(
            [session(k, t, self.lingering) for k, t in tasks],
            [session(k, t, self.lingering) for k, t in threads],
        )

    @rule(outcome=st.sampled_from([SessionSucceeded, SessionFailed, SessionNotRun]))
    def a_lingering_session_ends(self, outcome: type[Any]) -> None:
        if self.lingering:
            self._run([send(outcome(self.lingering.pop(0)))], [])

    @rule()
    def status(self) -> None:
        self._run([send(GetBreakerStatus())], [])

    @rule()
    def reset(self) -> None:
        # Only now and then (a reset at every chance would keep the breaker closed). Not a
        # precondition: the state depends on the interleaving, and draws must not.
        if self.model.state is OPEN:
            self._run([], [send(ResetBreaker())])  # from a thread

    def teardown(self) -> None:
        async def stop() -> None:
            await self.ref.stop(block=False)

        self.home.call(stop())
        self.home.close()


BreakerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerMachine = BreakerMachine.TestCase
