"""A harness that checks a shared service against a sequential model, under real concurrency.

Senders are small programs (generators that yield `(message, "ask" | "tell")` and get
the reply back) run at the same time from asyncio tasks on the service's loop and from
plain threads. The service under test is wrapped by `recording(...)`: it appends each
message it handles, with the outcome and a view of its state afterwards, to a history.
That history is the order the actor really handled the messages in (its linearization),
so the check is exact, whatever the interleaving was:

- every message sent was handled exactly once, each sender's in the order it sent them;
- replaying the history through the sequential model gives the same outcome for every
  message and the same state view after every step (so invariants checked on the
  model's views, such as "no count above its limit", held at every step of the actor).

The tests at the bottom show the harness catches a service that breaks its model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import pykka
import pytest

from aiowt.actors import Request, Service, handles

TIMEOUT = 10.0

Mode = Literal["ask", "tell"]
Program = Generator[tuple[object, Mode], object, None]
"""A sender: yields (message, mode); an ask's reply (or `Failed`) is sent back in."""


@dataclass(frozen=True)
class Failed:
    """The outcome of a message whose handler raised: the exception's type name."""

    error: str


@dataclass(frozen=True, slots=True)
class TakeHistory(Request["list[tuple[object, object, object]]"]):
    """Test-only: hand over (and clear) the recorded history; not itself recorded."""


S = TypeVar("S", bound=Service)


def recording(service: type[S], view: Callable[[S], object]) -> type[S]:
    """A subclass of `service` that records (message, outcome, view) per message handled."""

    class Recording(service):  # type: ignore[valid-type,misc]
        history: list[tuple[object, object, object]]
        _recorded_view: ClassVar[Callable[[Any], object]] = staticmethod(view)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.history = []

        @handles(TakeHistory)
        def _take_history(self, message: TakeHistory) -> list[tuple[object, object, object]]:
            history, self.history = self.history, []
            return history

        def on_receive(self, message: Any) -> Any:
            if isinstance(message, TakeHistory):
                return super().on_receive(message)
            try:
                result = super().on_receive(message)
            except Exception as error:
                self.history.append((message, Failed(type(error).__name__), self.view_now()))
                raise
            if inspect.iscoroutine(result):
                return self._record_when_done(message, result)
            self.history.append((message, result, self.view_now()))
            return result

        async def _record_when_done(self, message: Any, handling: Awaitable[Any]) -> Any:
            # An async handler (a service whose state lives in a store): the outcome is
            # known when it finishes, still before the next message starts.
            try:
                result = await handling
            except Exception as error:
                self.history.append((message, Failed(type(error).__name__), self.view_now()))
                raise
            self.history.append((message, result, self.view_now()))
            return result

        def view_now(self) -> object:
            return type(self)._recorded_view(self)

    Recording.__name__ = Recording.__qualname__ = f"Recording{service.__name__}"
    return Recording  # type: ignore[return-value]


class Model(Protocol):
    def apply(self, message: Any) -> object:
        """Handle `message` sequentially; return its outcome (a reply, or `Failed`)."""

    def view(self) -> object:
        """The state, in the same shape as the recorded view."""


@dataclass
class Sent:
    """What one sender sent, in order."""

    label: str
    messages: list[object] = field(default_factory=list)


def _outcome_of(call: Callable[[], object]) -> object:
    try:
        return call()
    except pykka.Timeout:
        raise
    except Exception as error:
        return Failed(type(error).__name__)


async def _run_task(ref: pykka.ActorRef[Any], program: Program, sent: Sent) -> None:
    reply: object = None
    while True:
        try:
            message, mode = program.send(reply)
        except StopIteration:
            return
        sent.messages.append(message)
        reply = None
        if mode == "tell":
            ref.tell(message)
        else:
            future = ref.ask(message, block=False)
            try:
                reply = await asyncio.wait_for(_await(future), TIMEOUT)
            except TimeoutError:
                raise
            except Exception as error:
                reply = Failed(type(error).__name__)


async def _await(future: pykka.Future[Any]) -> Any:
    return await future


def _run_thread(ref: pykka.ActorRef[Any], program: Program, sent: Sent) -> None:
    reply: object = None
    while True:
        try:
            message, mode = program.send(reply)
        except StopIteration:
            return
        sent.messages.append(message)
        reply = None
        if mode == "tell":
            ref.tell(message)
        else:
            future = ref.ask(message, block=False)
            reply = _outcome_of(lambda future=future: future.get(timeout=TIMEOUT))


async def drive(
    ref: pykka.ActorRef[Any],
    task_programs: Iterable[Program],
    thread_programs: Iterable[Program] = (),
) -> list[Sent]:
    """Run every program at once (tasks on this loop, threads beside it); return what each sent."""
    loop = asyncio.get_running_loop()
    go = threading.Event()  # release the threads together, for maximum overlap
    sents: list[Sent] = []
    thread_done: list[concurrent.futures.Future[None]] = []
    for n, program in enumerate(thread_programs):
        sent = Sent(f"thread-{n}")
        sents.append(sent)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread_done.append(done)

        def body(program: Program = program, sent: Sent = sent, done: Any = done) -> None:
            try:
                go.wait(TIMEOUT)
                _run_thread(ref, program, sent)
                done.set_result(None)
            except BaseException as error:  # surfaced below, not lost
                done.set_exception(error)

        threading.Thread(target=body, daemon=True).start()
    tasks = []
    for n, program in enumerate(task_programs):
        sent = Sent(f"task-{n}")
        sents.append(sent)
        tasks.append(loop.create_task(_run_task(ref, program, sent)))
    go.set()
    async with asyncio.timeout(TIMEOUT * 2):
        await asyncio.gather(*tasks)
        for done in thread_done:
            await asyncio.wrap_future(done)
    return sents


async def take_history(ref: pykka.ActorRef[Any]) -> list[tuple[object, object, object]]:
    # Tells from threads are in the inbox once `tell` returned, and the threads have
    # finished: this ask is handled after all of them.
    history: list[tuple[object, object, object]] = await asyncio.wait_for(
        _await(ref.ask(TakeHistory(), block=False)), TIMEOUT
    )
    return history


def check_history(
    history: list[tuple[object, object, object]],
    sents: list[Sent],
    model: Model,
    invariant: Callable[[object], None] = lambda view: None,
) -> None:
    """Assert the recorded history is a sequential run of `model` over exactly what was sent."""
    position = {id(message): n for n, (message, _, _) in enumerate(history)}
    assert len(position) == len(history), "a message was handled twice"
    sent_total = sum(len(s.messages) for s in sents)
    assert len(history) == sent_total, f"{sent_total} messages sent, {len(history)} handled"
    for sent in sents:
        where = [position.get(id(m)) for m in sent.messages]
        assert None not in where, f"a message of {sent.label} was never handled"
        assert where == sorted(where), f"{sent.label}'s messages were handled out of order"  # type: ignore[type-var]
    for step, (message, outcome, view) in enumerate(history):
        expected = model.apply(message)
        assert outcome == expected, f"step {step}: {message!r} gave {outcome!r}, model {expected!r}"
        model_view = model.view()
        assert view == model_view, (
            f"step {step}: after {message!r} state {view!r}, model {model_view!r}"
        )
        invariant(view)


def ops(*steps: tuple[object, Mode]) -> Program:
    """A program that sends fixed messages (replies ignored)."""
    yield from steps


# --- the harness catches what it should ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bump(Request[int]):
    by: int


class Tally(Service):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    @handles(Bump)
    def _bump(self, message: Bump) -> int:
        self.total += message.by
        return self.total


class SloppyTally(Tally):
    """Breaks the model: every third bump is counted twice."""

    @handles(Bump)
    def _bump(self, message: Bump) -> int:
        self.total += message.by * (2 if message.by % 3 == 0 else 1)
        return self.total


class TallyModel:
    def __init__(self) -> None:
        self.total = 0

    def apply(self, message: Any) -> object:
        if not isinstance(message, Bump):
            return Failed("UnknownMessage")
        self.total += message.by
        return self.total

    def view(self) -> object:
        return self.total


def bumps(values: list[int]) -> Program:
    for n, value in enumerate(values):
        yield Bump(value), "ask" if n % 2 else "tell"


async def test_a_correct_service_passes() -> None:
    ref = recording(Tally, lambda t: t.total).start()
    try:
        tasks = [bumps([1, 2, 4]) for _ in range(5)]
        sents = await drive(ref, tasks, [bumps([1, 1]) for _ in range(3)])
        check_history(await take_history(ref), sents, TallyModel())
    finally:
        await ref.stop(block=False)


async def test_a_service_that_breaks_its_model_is_caught() -> None:
    ref = recording(SloppyTally, lambda t: t.total).start()
    try:
        sents = await drive(ref, [bumps([1, 3]) for _ in range(3)], [bumps([3])])
        with pytest.raises(AssertionError, match="model"):
            check_history(await take_history(ref), sents, TallyModel())
    finally:
        await ref.stop(block=False)


async def test_a_lost_message_is_caught() -> None:
    ref = recording(Tally, lambda t: t.total).start()
    try:
        sents = await drive(ref, [bumps([1, 2])])
        sents[0].messages.append(Bump(5))  # "sent" but never delivered
        with pytest.raises(AssertionError, match="handled"):
            check_history(await take_history(ref), sents, TallyModel())
    finally:
        await ref.stop(block=False)
