"""LoopActor and LoopFuture on real event loops: ask/tell/proxy, ordering, failures, stop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pykka
import pytest
from pykka import ActorDeadError, ActorRegistry
from structlog.testing import capture_logs

from aiowt.actors import LoopActor
from aiowt.actors._runtime import BlockingGetOnLoopError, Later, LoopFuture, NoRunningLoopError

T = TypeVar("T")

TIMEOUT = 10.0


async def within(awaitable: Awaitable[T]) -> T:
    """Every wait in these tests is bounded: a hang is a failure, not a stuck run."""
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def until(predicate: Any) -> None:
    """Yield to the loop until `predicate()` holds; bounded, and fails if it never does."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.0005)
    raise AssertionError(f"condition never held: {predicate}")


def awaiting(future: LoopFuture[Any]) -> bool:
    return bool(future._loop_waiters)


async def in_thread(func: Any, *args: Any, **kwargs: Any) -> Any:
    return await within(asyncio.to_thread(func, *args, **kwargs))


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[pykka.ActorRef[Any]]]:
    # A fatal error makes an actor stop every registered actor (pykka's rule); keep that,
    # and registry assertions, confined to the actors of one test.
    refs: list[pykka.ActorRef[Any]] = []
    monkeypatch.setattr(ActorRegistry, "_actor_refs", refs)
    return refs


# --- actors used below -------------------------------------------------------------------


class Echo(LoopActor):
    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        return message


class Calc(LoopActor):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def add(self, n: int) -> int:
        self.total += n
        return self.total

    async def add_slowly(self, n: int) -> int:
        total = self.total
        await asyncio.sleep(0)
        self.total = total + n
        return self.total

    async def fail(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")


class Racy(LoopActor):
    """Reads, awaits, then writes: only safe if messages are handled one at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.active = 0
        self.max_active = 0

    async def on_receive(self, message: Any) -> int:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        value = self.value
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.value = value + message
        self.active -= 1
        return self.value


class Blocker(LoopActor):
    """`"block"` parks the handler until the task is torn down."""

    def __init__(self, entered: threading.Event) -> None:
        super().__init__()
        self.entered = entered

    async def on_receive(self, message: Any) -> Any:
        if message == "block":
            self.entered.set()
            await asyncio.Event().wait()
        if message == "wait":
            return None
        return message


# --- ask, tell, proxy ---------------------------------------------------------------------


async def test_ask_and_tell_are_handled_in_order() -> None:
    ref = Calc.start()
    proxy = ref.proxy()
    proxy.add.defer(2)
    proxy.add.defer(3)
    assert await within(proxy.add(10)) == 15
    assert await within(ref.stop(block=False)) is True


async def test_ask_returns_a_loop_future() -> None:
    ref = Echo.start()
    future = ref.ask("hi", block=False)
    assert isinstance(future, LoopFuture)
    assert await within(future) == "hi"
    assert future.get() == "hi"  # already set: fine on the loop


async def test_proxy_sync_and_async_methods_and_attributes() -> None:
    ref = Calc.start()
    proxy = ref.proxy()
    assert await within(proxy.add(1)) == 1
    assert await within(proxy.add_slowly(2)) == 3
    assert await within(proxy.total) == 3
    with pytest.raises(KeyError, match="missing"):
        await within(proxy.fail())
    assert await within(proxy.add(1)) == 4


async def test_async_handlers_run_one_message_at_a_time() -> None:
    ref = Racy.start()
    senders, per_sender = 40, 25

    async def sender() -> list[int]:
        futures = [ref.ask(1, block=False) for _ in range(per_sender)]
        return [await within(f) for f in futures]

    replies = await within(asyncio.gather(*(sender() for _ in range(senders))))
    total = senders * per_sender
    flat = sorted(r for batch in replies for r in batch)
    # No lost update: every increment is seen, and each reply is a distinct running total.
    assert flat == list(range(1, total + 1))
    assert await within(ref.proxy().value) == total
    assert await within(ref.proxy().max_active) == 1


async def test_the_racy_handler_does_lose_updates_without_the_actor() -> None:
    # Control for the test above: the same handler run concurrently loses updates, so
    # the exact count above is evidence of one-at-a-time handling.
    racy = Racy()
    await within(asyncio.gather(*(racy.on_receive(1) for _ in range(50))))
    assert racy.value < 50
    assert racy.max_active > 1


async def test_async_on_start_finishes_before_the_first_message() -> None:
    class Starter(LoopActor):
        def __init__(self) -> None:
            super().__init__()
            self.ready = False

        async def on_start(self) -> None:
            await asyncio.sleep(0)
            self.ready = True

        def on_receive(self, message: Any) -> bool:
            return self.ready

    ref = Starter.start()
    assert await within(ref.ask("ready?", block=False)) is True


async def test_async_on_stop_finishes_before_the_stop_future() -> None:
    events: list[str] = []

    class Stopper(LoopActor):
        async def on_stop(self) -> None:
            await asyncio.sleep(0)
            events.append("on_stop done")

    ref = Stopper.start()
    assert await within(ref.stop(block=False)) is True
    assert events == ["on_stop done"]


async def test_tell_from_init_is_delivered_after_start() -> None:
    class SelfTeller(LoopActor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []
            self.actor_ref.tell("from __init__")

        def on_receive(self, message: Any) -> Any:
            if message == "seen?":
                return list(self.seen)
            self.seen.append(message)
            return None

    ref = SelfTeller.start()
    assert await within(ref.ask("seen?", block=False)) == ["from __init__"]


async def test_an_actor_can_await_another_actor() -> None:
    target = Echo.start()

    class Forwarder(LoopActor):
        async def on_receive(self, message: Any) -> Any:
            return await target.ask(message, block=False)

    forwarder = Forwarder.start()
    assert await within(forwarder.ask("relayed", block=False)) == "relayed"


async def test_started_actors_cost_no_thread() -> None:
    before = {thread.ident for thread in threading.enumerate()}
    refs = [Echo.start() for _ in range(200)]
    assert await within(refs[-1].ask("up", block=False)) == "up"
    assert {thread.ident for thread in threading.enumerate()} <= before


# --- other threads ------------------------------------------------------------------------


async def test_ask_from_another_thread_with_get_timeout() -> None:
    ref = Calc.start()

    def from_thread() -> tuple[int, int]:
        blocking = ref.ask(pykka.messages.ProxyCall(("add",), (5,), {}), timeout=TIMEOUT)
        via_proxy = ref.proxy().add_slowly(1).get(timeout=TIMEOUT)
        return blocking, via_proxy

    assert await in_thread(from_thread) == (5, 6)


async def test_exception_reaches_a_caller_in_another_thread() -> None:
    ref = Echo.start()

    def from_thread() -> None:
        ref.ask("boom", timeout=TIMEOUT)

    with pytest.raises(ValueError, match="boom"):
        await in_thread(from_thread)
    assert ref.is_alive()


async def test_get_all_and_stop_from_another_thread() -> None:
    ref = Echo.start()

    def from_thread() -> tuple[list[Any], bool]:
        futures = [ref.ask(i, block=False) for i in range(20)]
        values = list(pykka.get_all(futures, timeout=TIMEOUT))
        return values, ref.stop(timeout=TIMEOUT)

    values, stopped = await in_thread(from_thread)
    assert values == list(range(20))
    assert stopped is True
    assert not ref.is_alive()


async def test_tells_from_many_threads_all_arrive() -> None:
    ref = Calc.start()
    threads, per_thread = 4, 500

    def teller() -> None:
        for _ in range(per_thread):
            ref.proxy().add.defer(1)

    await within(asyncio.gather(*(asyncio.to_thread(teller) for _ in range(threads))))
    assert await within(ref.proxy().total) == threads * per_thread


# --- LoopFuture ---------------------------------------------------------------------------


async def test_get_on_the_loop_raises_instead_of_deadlocking() -> None:
    ref = Blocker.start(threading.Event())
    future = ref.ask("wait", block=False)
    with pytest.raises(BlockingGetOnLoopError, match="await"):
        future.get()
    with pytest.raises(BlockingGetOnLoopError):
        ref.ask("wait")  # pykka's blocking ask
    with pytest.raises(BlockingGetOnLoopError):
        ref.stop()  # pykka's blocking stop, through the get hook
    assert issubclass(BlockingGetOnLoopError, RuntimeError)
    assert await within(future) is None
    assert future.get() is None


async def test_get_with_zero_timeout_polls() -> None:
    future: LoopFuture[int] = LoopFuture()
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0)
    future.set(1)
    assert future.get(timeout=0) == 1


async def test_get_from_a_thread_times_out() -> None:
    future: LoopFuture[int] = LoopFuture()
    with pytest.raises(pykka.Timeout):
        await in_thread(future.get, timeout=0.01)


async def test_set_from_a_thread_wakes_an_awaiting_task() -> None:
    future: LoopFuture[int] = LoopFuture()
    waiting = asyncio.create_task(within(future))
    await until(lambda: awaiting(future))
    await in_thread(future.set, 7)
    assert await within(waiting) == 7


async def test_set_exception_from_a_thread_reaches_the_awaiting_task() -> None:
    future: LoopFuture[int] = LoopFuture()
    waiting = asyncio.create_task(within(future))
    await until(lambda: awaiting(future))

    def fail() -> None:
        try:
            raise LookupError("from thread")
        except LookupError:
            future.set_exception()

    await in_thread(fail)
    with pytest.raises(LookupError, match="from thread"):
        await within(waiting)


async def test_a_thread_blocked_in_get_is_woken_by_set() -> None:
    future: LoopFuture[str] = LoopFuture()
    getter = asyncio.create_task(in_thread(future.get, timeout=TIMEOUT))
    await until(lambda: future._thread_waiter is not None)
    future.set("woken")
    assert await within(getter) == "woken"


async def test_a_future_is_set_once() -> None:
    future: LoopFuture[int] = LoopFuture()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    with pytest.raises(queue.Full):
        future.set_exception((ValueError, ValueError(), None))
    with pytest.raises(queue.Full):
        future.set_get_hook(lambda timeout: 3)
    hooked: LoopFuture[int] = LoopFuture()
    hooked.set_get_hook(lambda timeout: 3)
    with pytest.raises(queue.Full):
        hooked.set(4)
    assert await within(hooked) == 3


async def test_derived_futures_are_awaitable_without_blocking() -> None:
    first: LoopFuture[int] = LoopFuture()
    second: LoopFuture[int] = LoopFuture()
    mapped = asyncio.create_task(within(first.map(lambda x: x * 10)))
    joined = asyncio.create_task(within(first.join(second)))
    reduced = asyncio.create_task(within(first.join(second).reduce(lambda a, b: a + b)))
    filtered = asyncio.create_task(within(first.join(second).filter(lambda x: x > 1)))
    await until(lambda: first._loop_waiters is not None and len(first._loop_waiters) == 4)
    second.set(2)
    await until(lambda: first._loop_waiters is not None and len(first._loop_waiters) == 4)
    assert not any(t.done() for t in (mapped, joined, reduced, filtered))
    first.set(1)
    assert await within(mapped) == 10
    assert await within(joined) == [1, 2]
    assert await within(reduced) == 3
    assert list(await within(filtered)) == [2]


async def test_a_derived_future_propagates_the_dependency_error() -> None:
    future: LoopFuture[int] = LoopFuture()
    derived = asyncio.create_task(within(future.map(lambda x: x + 1)))
    await until(lambda: awaiting(future))
    future.set_exception((ValueError, ValueError("bad"), None))
    with pytest.raises(ValueError, match="bad"):
        await within(derived)


async def test_a_get_hook_set_while_awaiting_wakes_the_awaiter() -> None:
    future: LoopFuture[int] = LoopFuture()
    waiting = asyncio.create_task(within(future))
    await until(lambda: awaiting(future))
    future.set_get_hook(lambda timeout: 42)
    assert await within(waiting) == 42


async def test_a_cancelled_awaiter_leaves_no_waiter_behind() -> None:
    future: LoopFuture[int] = LoopFuture()
    waiting = asyncio.create_task(within(future))
    await until(lambda: awaiting(future))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert future._loop_waiters == []
    future.set(1)
    assert await within(future) == 1


# --- failures -----------------------------------------------------------------------------


async def test_exception_in_ask_reaches_the_caller_and_actor_survives() -> None:
    ref = Echo.start()
    with pytest.raises(ValueError, match="boom"):
        await within(ref.ask("boom", block=False))
    assert ref.is_alive()
    assert await within(ref.ask("still here", block=False)) == "still here"


async def test_exception_in_tell_logs_and_stops_the_actor() -> None:
    failures: list[type[BaseException] | None] = []
    failure_seen = asyncio.Event()

    class Fragile(LoopActor):
        def on_receive(self, message: Any) -> None:
            raise ValueError("told wrong")

        async def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
            await asyncio.sleep(0)
            failures.append(exception_type)
            failure_seen.set()

    ref = Fragile.start()
    assert ActorRegistry.get_by_urn(ref.actor_urn) is ref
    with capture_logs() as logs:
        ref.tell("anything")
        await within(failure_seen.wait())
    assert failures == [ValueError]
    assert not ref.is_alive()
    assert ActorRegistry.get_by_urn(ref.actor_urn) is None
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors
    assert errors[0]["event"] == "unhandled exception in actor"
    with pytest.raises(ActorDeadError):
        await within(ref.ask("x", block=False))


async def test_failing_on_start_stops_the_actor_and_fails_queued_asks() -> None:
    class BadStart(LoopActor):
        async def on_start(self) -> None:
            await asyncio.sleep(0)
            raise RuntimeError("cannot start")

    with capture_logs() as logs:
        ref = BadStart.start()
        queued = ref.ask("x", block=False)
        with pytest.raises(ActorDeadError):
            await within(queued)
    assert not ref.is_alive()
    assert any(e["event"] == "unhandled exception in actor" for e in logs)


async def test_fatal_base_exception_stops_this_actor_and_the_others() -> None:
    class Fatal(BaseException):
        pass

    class Doomed(LoopActor):
        def on_receive(self, message: Any) -> None:
            raise Fatal

    other_stopped = asyncio.Event()

    class Bystander(LoopActor):
        def on_stop(self) -> None:
            other_stopped.set()

    bystander = Bystander.start()
    doomed = Doomed.start()
    with capture_logs():
        with pytest.raises(ActorDeadError):
            await within(doomed.ask("x", block=False))
        await within(other_stopped.wait())
    assert not doomed.is_alive()
    assert not bystander.is_alive()
    assert ActorRegistry.get_all() == []


# --- stop, cancellation, loop teardown ----------------------------------------------------


async def test_stop_then_ask_gives_actor_dead_error() -> None:
    ref = Echo.start()
    assert await within(ref.stop(block=False)) is True
    assert not ref.is_alive()
    with pytest.raises(ActorDeadError):
        await within(ref.ask("x", block=False))
    with pytest.raises(ActorDeadError):
        ref.tell("x")
    assert await within(ref.stop(block=False)) is False  # already dead


async def test_messages_sent_before_stop_are_handled_and_after_it_fail() -> None:
    ref = Calc.start()
    before = ref.proxy().add_slowly(1)
    stopping = ref.stop(block=False)
    after = ref.proxy().add(1)
    assert await within(before) == 1
    assert await within(stopping) is True
    with pytest.raises(ActorDeadError):
        await within(after)


async def test_stopping_an_actor_from_inside_a_handler() -> None:
    class Quitter(LoopActor):
        def on_receive(self, message: Any) -> str:
            self.stop()
            return "bye"

    ref = Quitter.start()
    assert await within(ref.ask("quit", block=False)) == "bye"
    assert await within(ref.stop(block=False)) in (True, False)
    assert not ref.is_alive()


async def test_cancelling_the_task_fails_in_flight_and_queued_asks() -> None:
    entered = threading.Event()
    ref = Blocker.start(entered)
    in_flight = ref.ask("block", block=False)
    queued = ref.ask("next", block=False)
    await in_thread(entered.wait, TIMEOUT)
    actor = ref._actor_weakref()
    assert actor is not None
    assert actor._actor_task is not None
    task = actor._actor_task
    task.cancel()
    with pytest.raises(ActorDeadError):
        await within(in_flight)
    with pytest.raises(ActorDeadError):
        await within(queued)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ref.is_alive()
    assert ActorRegistry.get_by_urn(ref.actor_urn) is None


async def test_a_handler_raising_cancelled_error_tears_the_actor_down() -> None:
    class SelfCancelling(LoopActor):
        def on_receive(self, message: Any) -> None:
            raise asyncio.CancelledError

    ref = SelfCancelling.start()
    with pytest.raises(ActorDeadError):
        await within(ref.ask("x", block=False))
    assert not ref.is_alive()


async def test_loop_shutdown_fails_pending_asks_from_another_loop() -> None:
    entered = threading.Event()
    started: concurrent.futures.Future[tuple[pykka.ActorRef[Blocker], Any, Any]]
    started = concurrent.futures.Future()

    def run_other_loop() -> None:
        async def main() -> None:
            shutdown = asyncio.Event()
            ref = Blocker.start(entered)
            started.set_result((ref, asyncio.get_running_loop(), shutdown))
            await shutdown.wait()

        # asyncio.run cancels the remaining tasks, the actor's included, on the way out.
        asyncio.run(main())

    thread = threading.Thread(target=run_other_loop)
    thread.start()
    try:
        ref, other_loop, shutdown = await within(asyncio.wrap_future(started))
        assert ActorRegistry.get_by_urn(ref.actor_urn) is ref
        in_flight = ref.ask("block", block=False)
        queued = ref.ask("next", block=False)
        await in_thread(entered.wait, TIMEOUT)
        other_loop.call_soon_threadsafe(shutdown.set)
        with pytest.raises(ActorDeadError):
            await within(in_flight)
        with pytest.raises(ActorDeadError):
            await within(queued)
    finally:
        await in_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()
    assert not ref.is_alive()
    assert ActorRegistry.get_by_urn(ref.actor_urn) is None
    with pytest.raises(ActorDeadError):
        await within(ref.ask("late", block=False))


# --- registry -----------------------------------------------------------------------------


async def test_registered_globally_by_default() -> None:
    ref = Echo.start()
    assert ActorRegistry.get_by_urn(ref.actor_urn) is ref
    assert await within(ref.stop(block=False)) is True
    assert ActorRegistry.get_by_urn(ref.actor_urn) is None


async def test_register_globally_false_keeps_the_actor_out_of_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class SessionLike(Echo):
        register_globally = False

    unregistered: list[Any] = []
    monkeypatch.setattr(
        ActorRegistry, "unregister", classmethod(lambda cls, ref: unregistered.append(ref))
    )
    refs = [SessionLike.start() for _ in range(50)]
    assert ActorRegistry.get_all() == []
    assert await within(refs[0].ask("works", block=False)) == "works"
    stopped = await within(asyncio.gather(*(r.stop(block=False) for r in refs)))
    assert stopped == [True] * 50
    assert unregistered == []  # stopping never scans the registry


# --- starting -----------------------------------------------------------------------------


def test_start_without_a_running_loop_fails_clearly(
    isolated_registry: list[pykka.ActorRef[Any]],
) -> None:
    constructed: list[object] = []

    class Tracked(Echo):
        def __init__(self) -> None:
            super().__init__()
            constructed.append(self)

    with pytest.raises(NoRunningLoopError, match="running asyncio event loop"):
        Tracked.start()
    assert issubclass(NoRunningLoopError, RuntimeError)
    assert constructed == []
    assert isolated_registry == []


async def test_stop_future_is_a_loop_future_with_a_hook() -> None:
    ref = Echo.start()
    stopping = ref.stop(block=False)
    assert isinstance(stopping, LoopFuture)
    assert await within(stopping) is True


# --- Later: replies that come after the next messages -------------------------------------


class Deferring(LoopActor):
    """``("wait", event)`` replies once `event` is set, without holding up the next
    messages; ``("fail", event)`` raises once it is set; anything else echoes."""

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple):
            kind, event = message
            return Later(self._after(kind, event))
        return message

    async def _after(self, kind: str, event: asyncio.Event) -> str:
        await event.wait()
        if kind == "fail":
            raise ValueError("later, and wrong")
        return "at last"


async def test_a_later_reply_lets_the_next_messages_through() -> None:
    ref = Deferring.start()
    release = asyncio.Event()
    slow = ref.ask(("wait", release), block=False)
    # The actor answers the next ask while the first still waits: it was not held up.
    assert await within(ref.ask("next", block=False)) == "next"
    assert not slow._done  # still waiting for its event
    release.set()
    assert await within(slow) == "at last"


async def test_a_later_failure_reaches_the_asker_and_the_actor_goes_on() -> None:
    ref = Deferring.start()
    release = asyncio.Event()
    failing = ref.ask(("fail", release), block=False)
    release.set()
    with pytest.raises(ValueError, match="later, and wrong"):
        await within(failing)
    assert await within(ref.ask("still here", block=False)) == "still here"
