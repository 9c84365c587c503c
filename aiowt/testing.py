"""A testing kit for actors and handlers: scopes, in-memory sessions, property-based interleavings.

- `ActorScope`: start actors on the test's loop and stop them all afterwards
  (`async with ActorScope() as scope: ref = scope.start(Counter)`); the pytest plugin
  `aiowt.pytest_plugin` offers it as the `actor_scope` fixture.
- `handler_session(...)`: a client session to one handler actor through an in-memory
  QUIC connection (no sockets), with the real routing, middleware and wire format.
- Hypothesis helpers: `schedules()` draws interleavings of concurrent senders, `run_schedule`
  plays one against a target, `check_linearizable` compares the replies with a sequential
  model, and `ActorStateMachine` wraps all three in a `RuleBasedStateMachine` whose shrunk
  counterexample prints as a readable interleaving.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pykka
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from aiowt.actors import Handler
from aiowt.middleware import Middleware
from aiowt.transport import Session

from .server import Server

__all__ = [
    "ActorScope",
    "ActorStateMachine",
    "NotLinearizable",
    "Outcome",
    "Step",
    "check_linearizable",
    "handler_session",
    "message_sequences",
    "run_schedule",
    "schedules",
]

Op = TypeVar("Op")
A = TypeVar("A", bound=pykka.Actor)


class ActorScope:
    """Starts actors on the running loop and stops every one of them on exit."""

    def __init__(self) -> None:
        self._refs: list[pykka.ActorRef[Any]] = []

    def start(self, actor_class: type[A], *args: Any, **kwargs: Any) -> pykka.ActorRef[A]:
        ref = actor_class.start(*args, **kwargs)
        self._refs.append(ref)
        return ref

    async def stop_all(self, timeout: float = 5.0) -> None:
        """Stop in reverse start order; an actor already dead is fine."""
        refs, self._refs = self._refs[::-1], []
        async with asyncio.timeout(timeout):
            for ref in refs:
                if ref.is_alive():
                    await ref.stop(block=False)

    async def __aenter__(self) -> ActorScope:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_all()


@asynccontextmanager
async def handler_session(
    handler: type[Handler],
    path: str = "/test",
    *,
    pattern: str | None = None,
    middleware: Sequence[Middleware] = (),
    headers: list[tuple[str, str]] | None = None,
) -> AsyncIterator[Session]:
    """A client `Session` to `handler`, served in memory on route `pattern` (default `path`)."""
    server = Server()
    server.route(pattern or path, handler, *middleware)
    session = await server.connect_in_memory(path, headers=headers)
    try:
        yield session
    finally:
        await session.aclose()
        await server.shutdown(timeout=5)


# --- interleavings ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step(Generic[Op]):
    """One operation of one sender, sent after yielding to the loop `delay` times."""

    sender: int
    op: Op
    delay: int


@dataclass(frozen=True)
class Outcome(Generic[Op]):
    step: Step[Op]
    reply: Any
    order: int
    """Position in completion order: when the reply arrived."""


def message_sequences(
    messages: st.SearchStrategy[Any], max_size: int = 20
) -> st.SearchStrategy[list[Any]]:
    """Lists of messages, shrinking towards short ones."""
    return st.lists(messages, max_size=max_size)


def schedules(
    operations: st.SearchStrategy[Op], *, senders: int = 3, max_steps: int = 6, max_delay: int = 3
) -> st.SearchStrategy[list[Step[Op]]]:
    """Interleavings of up to `senders` concurrent senders, each sending its ops in order.

    The `delay`s decide the interleaving on the loop, so a failing one replays exactly
    and shrinks to few steps, few senders, and small delays.
    """
    step = st.builds(
        Step, sender=st.integers(0, senders - 1), op=operations, delay=st.integers(0, max_delay)
    )
    return st.lists(step, min_size=1, max_size=max_steps)


async def run_schedule(
    schedule: Sequence[Step[Op]],
    invoke: Callable[[Op], Awaitable[Any]],
    *,
    thread_senders: Collection[int] = (),
    timeout: float = 10.0,
) -> list[Outcome[Op]]:
    """Run each sender as its own task (or thread); return the replies in completion order.

    Senders in `thread_senders` run in threads of their own: there `invoke` must return
    a pykka future (an actor ask or proxy call), which the thread `.get()`s, as code
    outside the loop does; their `delay`s do not apply (the OS decides).
    """
    outcomes: list[Outcome[Op]] = []
    lock = threading.Lock()
    by_sender: dict[int, list[Step[Op]]] = {}
    for step in schedule:
        by_sender.setdefault(step.sender, []).append(step)

    def record(step: Step[Op], reply: Any) -> None:
        with lock:
            outcomes.append(Outcome(step, reply, len(outcomes)))

    async def task_sender(steps: list[Step[Op]]) -> None:
        for step in steps:
            for _ in range(step.delay):
                await asyncio.sleep(0)
            record(step, await invoke(step.op))

    def thread_sender(steps: list[Step[Op]]) -> None:
        for step in steps:
            future = invoke(step.op)
            if not isinstance(future, pykka.Future):
                raise TypeError("a thread sender's invoke must return a pykka future")
            record(step, future.get(timeout=timeout))

    async with asyncio.TaskGroup() as group:
        for sender, steps in by_sender.items():
            if sender in thread_senders:
                group.create_task(asyncio.to_thread(thread_sender, steps))
            else:
                group.create_task(task_sender(steps))
    return outcomes


class NotLinearizable(AssertionError):
    """No sequential order of the operations explains the replies the target gave."""


def check_linearizable(
    outcomes: Sequence[Outcome[Op]],
    model: Any,
    apply: Callable[[Any, Op], Any],
) -> tuple[Any, list[Outcome[Op]]]:
    """Find a sequential order (keeping each sender's order) that the model agrees with.

    Returns the model after that order and the order itself; raises `NotLinearizable`
    with the interleaving spelled out when there is none. Brute force: fine for the
    handful of steps a schedule has.
    """
    senders: dict[int, list[Outcome[Op]]] = {}
    for outcome in sorted(outcomes, key=lambda o: o.order):
        senders.setdefault(outcome.step.sender, []).append(outcome)
    for order in _merges(list(senders.values())):
        candidate = copy.deepcopy(model)
        if all(apply(candidate, outcome.step.op) == outcome.reply for outcome in order):
            return candidate, order
    raise NotLinearizable(describe(outcomes))


def _merges(queues: list[list[Outcome[Op]]]) -> Iterator[list[Outcome[Op]]]:
    """Every interleaving of `queues` that keeps each queue's own order."""

    def merge(heads: tuple[int, ...]) -> Iterator[list[Outcome[Op]]]:
        if all(head == len(queue) for head, queue in zip(heads, queues, strict=True)):
            yield []
            return
        for index, queue in enumerate(queues):
            if heads[index] < len(queue):
                advanced = (*heads[:index], heads[index] + 1, *heads[index + 1 :])
                for rest in merge(advanced):
                    yield [queue[heads[index]], *rest]

    return merge(tuple(0 for _ in queues))


def describe(outcomes: Sequence[Outcome[Any]]) -> str:
    """The interleaving as the target saw it, one line per reply, in arrival order."""
    lines = ["replies in arrival order (no sequential order of the ops explains them):"]
    for outcome in sorted(outcomes, key=lambda o: o.order):
        step = outcome.step
        lines.append(
            f"  sender {step.sender} (after {step.delay} yields): {step.op!r} -> {outcome.reply!r}"
        )
    return "\n".join(lines)


class ActorStateMachine(RuleBasedStateMachine):
    """Compare an actor (or anything with async operations) with a sequential model.

    Subclass and define:
    - `operations`: a strategy of operations (class attribute);
    - `make_target(self)`: start the actor under test (on `self.loop`'s running loop: it
      is called inside `self.run`) and return it;
    - `invoke(self, target, op)`: an awaitable reply, e.g. `target.proxy().add(op)`;
    - `make_model(self)` and `apply(self, model, op)`: the sequential model and its reply.

    Each step draws an interleaving of concurrent senders, runs it, and checks that some
    sequential order explains every reply; the model then follows that order.
    """

    operations: st.SearchStrategy[Any] = st.nothing()
    senders = 3
    max_steps = 6
    thread_senders: frozenset[int] = frozenset()
    """Senders that run in threads (their `invoke` must return a pykka future)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.target = self.run(self._make_target())
        self.model = self.make_model()

    async def _make_target(self) -> Any:
        return self.make_target()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Run `awaitable` on this machine's loop (with a bound, so a hang fails)."""

        async def bounded() -> Any:
            async with asyncio.timeout(10):
                return await awaitable

        return self.loop.run_until_complete(bounded())

    def make_target(self) -> Any:
        raise NotImplementedError

    def invoke(self, target: Any, op: Any) -> Awaitable[Any]:
        raise NotImplementedError

    def make_model(self) -> Any:
        raise NotImplementedError

    def apply(self, model: Any, op: Any) -> Any:
        raise NotImplementedError

    @rule(data=st.data())
    def concurrent_batch(self, data: st.DataObject) -> None:
        schedule = data.draw(
            schedules(self.operations, senders=self.senders, max_steps=self.max_steps),
            label="schedule",
        )
        outcomes = self.run(
            run_schedule(
                schedule,
                lambda op: self.invoke(self.target, op),
                thread_senders=self.thread_senders,
            )
        )
        note(describe(outcomes))
        self.model, _ = check_linearizable(outcomes, self.model, self.apply)

    def teardown(self) -> None:
        try:
            if isinstance(self.target, pykka.ActorRef) and self.target.is_alive():
                self.run(self.target.stop(block=False))
        finally:
            self.loop.close()
