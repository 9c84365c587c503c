"""The testing kit tests itself: it catches a racy object and passes the same logic in an actor."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, find, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from aiowt.actors import Handler, LoopActor
from aiowt.testing import (
    ActorScope,
    ActorStateMachine,
    NotLinearizable,
    check_linearizable,
    handler_session,
    run_schedule,
    schedules,
)
from aiowt.transport import Stream
from tests.conftest import bounded


class Tally:
    """Adds to a running total across an await: fine one call at a time, racy otherwise."""

    def __init__(self) -> None:
        self.total = 0

    async def add(self, amount: int) -> int:
        seen = self.total
        await asyncio.sleep(0)  # e.g. a lookup in another actor
        self.total = seen + amount
        return self.total


class TallyActor(LoopActor):
    def __init__(self) -> None:
        super().__init__()
        self.tally = Tally()

    async def add(self, amount: int) -> int:
        return await self.tally.add(amount)


def model_add(model: list[int], amount: int) -> int:
    model[0] += amount
    return model[0]


class RacyTallyMachine(ActorStateMachine):
    operations = st.integers(1, 5)

    def make_target(self) -> Any:
        return Tally()

    def invoke(self, target: Any, op: Any) -> Any:
        return target.add(op)

    def make_model(self) -> Any:
        return [0]

    def apply(self, model: Any, op: Any) -> Any:
        return model_add(model, op)


class TallyActorMachine(RacyTallyMachine):
    def make_target(self) -> Any:
        return TallyActor.start()

    def invoke(self, target: Any, op: Any) -> Any:
        return target.proxy().add(op)


class TallyActorFromThreadsMachine(TallyActorMachine):
    senders = 4
    thread_senders = frozenset({2, 3})


def test_the_actor_passes_with_task_and_thread_senders_mixed() -> None:
    run_state_machine_as_test(
        TallyActorFromThreadsMachine,
        settings=settings(max_examples=25, stateful_step_count=4, deadline=None),
    )


def test_the_state_machine_catches_the_racy_object() -> None:
    with pytest.raises(NotLinearizable):
        run_state_machine_as_test(
            RacyTallyMachine, settings=settings(max_examples=50, deadline=None)
        )


def test_the_same_logic_inside_an_actor_passes() -> None:
    run_state_machine_as_test(
        TallyActorMachine,
        settings=settings(max_examples=40, stateful_step_count=5, deadline=None),
    )


def test_the_shrunk_counterexample_is_a_short_readable_interleaving() -> None:
    def racy(schedule: Any) -> bool:
        async def play() -> bool:
            tally = Tally()
            outcomes = await run_schedule(schedule, tally.add)
            try:
                check_linearizable(outcomes, [0], model_add)
            except NotLinearizable:
                return True
            return False

        return asyncio.run(play())

    smallest = find(
        schedules(st.integers(1, 5)),
        racy,
        settings=settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck)),
    )
    assert len(smallest) == 2
    assert {step.sender for step in smallest} == {0, 1}

    async def explain() -> str:
        outcomes = await run_schedule(smallest, Tally().add)
        with pytest.raises(NotLinearizable) as caught:
            check_linearizable(outcomes, [0], model_add)
        return str(caught.value)

    text = asyncio.run(explain())
    assert "sender 0" in text
    assert "sender 1" in text
    assert "->" in text


async def test_actor_scope_stops_what_it_started() -> None:
    async with ActorScope() as scope:
        refs = [scope.start(TallyActor) for _ in range(3)]
        assert await refs[0].proxy().add(2) == 2
    assert not any(ref.is_alive() for ref in refs)


async def test_handler_session_drives_a_handler_without_sockets() -> None:
    class Greeter(Handler):
        async def on_message(self, message: Any, stream: Stream | None) -> None:
            if stream is not None:
                stream.send_message(f"hello {message} in {self.ctx.path_params['room']}")

    async with handler_session(Greeter, "/rooms/blue", pattern="/rooms/{room}") as session:
        stream = session.open_stream()
        stream.send_message("ann")
        async with bounded():
            assert await stream.receive_message() == "hello ann in blue"
