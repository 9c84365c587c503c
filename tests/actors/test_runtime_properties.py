"""Property tests: a counter LoopActor driven by many tasks and threads matches a model.

The actor numbers the operations it handles (`seq`). Whatever the interleaving, the
replies must be exactly what a sequential model gives when it replays the operations in
that order: no lost update, no lost or duplicated reply, and each sender's operations
handled in the order it sent them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aiowt.actors import LoopActor
from aiowt.actors._runtime import LoopFuture

T = TypeVar("T")

TIMEOUT = 10.0

# --- operations and the sequential model ---------------------------------------------------


@dataclass(frozen=True)
class Add:
    n: int


@dataclass(frozen=True)
class Get:
    pass


@dataclass(frozen=True)
class CompareAndSet:
    expected: int
    new: int


@dataclass(frozen=True)
class Fail:
    """Handled like the others, but its reply is an exception (the actor must survive)."""


Op = Add | Get | CompareAndSet | Fail


class CounterFailed(Exception):
    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


def model_apply(value: int, op: Op) -> tuple[int, object]:
    """The sequential specification: (new value, result)."""
    if isinstance(op, Add):
        return value + op.n, value + op.n
    if isinstance(op, Get):
        return value, value
    if isinstance(op, CompareAndSet):
        if value == op.expected:
            return op.new, True
        return value, False
    return value, "failed"


class Counter(LoopActor):
    register_globally = False

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.seq = 0

    async def on_receive(self, op: Op) -> tuple[int, object]:
        # Read, yield to the loop, write: a lost update shows if two messages overlap.
        value, seq = self.value, self.seq
        await asyncio.sleep(0)
        self.seq = seq + 1
        if isinstance(op, Fail):
            raise CounterFailed(seq)
        self.value, result = model_apply(value, op)
        return seq, result

    def snapshot(self) -> tuple[int, int]:
        return self.seq, self.value


ops = st.one_of(
    st.builds(Add, st.integers(-5, 5)),
    st.just(Get()),
    st.builds(CompareAndSet, st.integers(-3, 3), st.integers(-3, 3)),
    st.just(Fail()),
)


@dataclass(frozen=True)
class Sender:
    ops: tuple[Op, ...]
    pipelined: bool  # send all, then collect; otherwise one at a time


senders = st.builds(
    Sender,
    ops=st.lists(ops, min_size=1, max_size=10).map(tuple),
    pipelined=st.booleans(),
)

Reply = tuple[int, object]


def normalise(outcome: Callable[[], Reply]) -> Reply:
    try:
        return outcome()
    except CounterFailed as failed:
        return failed.seq, "failed"


async def run_task_sender(ref: pykka.ActorRef[Counter], sender: Sender) -> list[Reply]:
    async def settle(future: pykka.Future[Reply]) -> Reply:
        try:
            return await asyncio.wait_for(future, TIMEOUT)
        except CounterFailed as failed:
            return failed.seq, "failed"

    if sender.pipelined:
        futures = [ref.ask(op, block=False) for op in sender.ops]
        return [await settle(f) for f in futures]
    return [await settle(ref.ask(op, block=False)) for op in sender.ops]


def run_thread_sender(ref: pykka.ActorRef[Counter], sender: Sender) -> list[Reply]:
    if sender.pipelined:
        futures = [ref.ask(op, block=False) for op in sender.ops]
        return [normalise(lambda f=f: f.get(timeout=TIMEOUT)) for f in futures]
    return [normalise(lambda op=op: ref.ask(op, timeout=TIMEOUT)) for op in sender.ops]


def check_against_model(
    start_value: int, start_seq: int, sent: Sequence[tuple[Sender, list[Reply]]]
) -> int:
    """Assert the replies are a sequential history; return the model's final value."""
    history: dict[int, tuple[Op, object]] = {}
    for sender, replies in sent:
        assert len(replies) == len(sender.ops), "a reply is missing"
        seqs = [seq for seq, _ in replies]
        assert seqs == sorted(seqs), "a sender's messages were handled out of order"
        for op, (seq, result) in zip(sender.ops, replies, strict=True):
            assert seq not in history, "two operations were handled as one"
            history[seq] = (op, result)
    total = sum(len(s.ops) for s, _ in sent)
    assert sorted(history) == list(range(start_seq, start_seq + total)), "lost or extra ops"
    value = start_value
    for seq in sorted(history):
        op, result = history[seq]
        value, expected = model_apply(value, op)
        assert result == expected, f"op #{seq} {op} answered {result!r}, model says {expected!r}"
    return value


async def drive(
    ref: pykka.ActorRef[Counter], task_senders: list[Sender], thread_senders: list[Sender]
) -> list[tuple[Sender, list[Reply]]]:
    """Run all senders at once: tasks on this loop, plain threads beside it."""
    loop = asyncio.get_running_loop()
    go = threading.Event()  # release every thread together, for maximum overlap
    thread_results: list[concurrent.futures.Future[list[Reply]]] = []
    for sender in thread_senders:
        result: concurrent.futures.Future[list[Reply]] = concurrent.futures.Future()
        thread_results.append(result)

        def body(sender: Sender = sender, result: Any = result) -> None:
            try:
                go.wait(TIMEOUT)
                result.set_result(run_thread_sender(ref, sender))
            except BaseException as error:  # surfaced by the assertion below, not lost
                result.set_exception(error)

        threading.Thread(target=body, daemon=True).start()
    tasks = [loop.create_task(run_task_sender(ref, s)) for s in task_senders]
    go.set()
    task_replies = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    thread_replies = [
        await asyncio.wait_for(asyncio.wrap_future(r), TIMEOUT) for r in thread_results
    ]
    return [
        *zip(task_senders, task_replies, strict=True),
        *zip(thread_senders, thread_replies, strict=True),
    ]


# --- @given over operation lists ----------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task_senders=st.lists(senders, min_size=1, max_size=6),
    thread_senders=st.lists(senders, max_size=3),
)
def test_concurrent_senders_match_the_sequential_model(
    task_senders: list[Sender], thread_senders: list[Sender]
) -> None:
    async def scenario() -> None:
        ref = Counter.start()
        sent = await drive(ref, task_senders, thread_senders)
        final = check_against_model(0, 0, sent)
        seq, value = await asyncio.wait_for(ref.proxy().snapshot(), TIMEOUT)
        assert (seq, value) == (sum(len(s.ops) for s, _ in sent), final)
        assert await asyncio.wait_for(ref.stop(block=False), TIMEOUT) is True

    asyncio.run(scenario())


# --- stateful: bursts against a long-lived actor, stops and restarts ---------------------


class LoopThread:
    """An event loop in a thread of its own: the actor's home in the state machine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def close(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


class CounterMachine(RuleBasedStateMachine):
    """The actor lives on loop A; senders are tasks on A, tasks on loop B, and threads."""

    def __init__(self) -> None:
        super().__init__()
        self.home = LoopThread()
        self.foreign = LoopThread()
        self.ref: pykka.ActorRef[Counter] | None = self._start()
        self.value = 0
        self.seq = 0

    def _start(self) -> pykka.ActorRef[Counter]:
        async def start() -> pykka.ActorRef[Counter]:
            return Counter.start()

        return self.home.call(start())

    @precondition(lambda self: self.ref is not None)
    @rule(
        home_tasks=st.lists(senders, max_size=4),
        foreign_tasks=st.lists(senders, max_size=2),
        threads=st.lists(senders, max_size=2),
    )
    def burst(
        self, home_tasks: list[Sender], foreign_tasks: list[Sender], threads: list[Sender]
    ) -> None:
        ref = self.ref
        assert ref is not None

        async def on_foreign_loop() -> list[list[Reply]]:
            return list(await asyncio.gather(*(run_task_sender(ref, s) for s in foreign_tasks)))

        foreign = asyncio.run_coroutine_threadsafe(on_foreign_loop(), self.foreign.loop)
        sent = self.home.call(drive(ref, home_tasks, threads))
        sent += list(zip(foreign_tasks, foreign.result(TIMEOUT), strict=True))
        self.value = check_against_model(self.value, self.seq, sent)
        self.seq += sum(len(s.ops) for s, _ in sent)

    @precondition(lambda self: self.ref is not None)
    @rule()
    def stop(self) -> None:
        ref = self.ref
        assert ref is not None
        # From this (loop-less) thread, through the stop future's get hook.
        assert ref.stop(timeout=TIMEOUT) is True
        with pytest.raises(pykka.ActorDeadError):
            ref.ask(Get(), timeout=TIMEOUT)
        assert ref.stop(timeout=TIMEOUT) is False
        self.ref = None

    @precondition(lambda self: self.ref is None)
    @rule()
    def restart(self) -> None:
        self.ref = self._start()
        self.value = 0
        self.seq = 0

    @invariant()
    def actor_state_matches_model(self) -> None:
        if self.ref is None:
            return
        future = self.ref.proxy().snapshot()
        assert isinstance(future, LoopFuture)
        assert future.get(timeout=TIMEOUT) == (self.seq, self.value)

    def teardown(self) -> None:
        self.home.close()
        self.foreign.close()


CounterMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCounterMachine = CounterMachine.TestCase
