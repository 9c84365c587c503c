"""The loop-native pykka actor type: actors that are asyncio tasks, not threads.

`LoopActor` plugs into pykka through its documented extension points
(`_create_actor_inbox`, `_create_future`, `_start_actor_loop`), so `ActorRef`,
`ActorProxy` and `ActorRegistry` keep working, while an idle actor costs a suspended
task and a few small objects instead of an OS thread.

Threading model, in one paragraph: everything an actor does runs on the event loop
that was running when it was started. Any thread may `tell`/`ask` it; only the loop
thread ever touches the actor's state. `LoopFuture` bridges the two worlds: awaited on
a loop it suspends the awaiting task, `.get()` from another thread blocks that thread,
and `.get()` on a loop thread refuses to block (it raises `BlockingGetOnLoopError`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import queue
import sys
import threading
import uuid
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import pykka
import structlog
from pykka import ActorDeadError, ActorRef, ActorRegistry, Timeout
from pykka.messages import _ActorStop

if TYPE_CHECKING:
    from types import TracebackType

    from pykka._actor import ActorInbox
    from pykka._envelope import Envelope
    from pykka._future import GetHookFunc
    from pykka._types import OptExcInfo

__all__ = ["BlockingGetOnLoopError", "Later", "LoopActor", "LoopFuture", "NoRunningLoopError"]

T = TypeVar("T")

log = structlog.get_logger("aiowt.actors")

# The C-accelerated getter: unlike `get_running_loop()` it returns None instead of
# raising, which keeps the per-message thread checks to one cheap call.
_get_running_loop = asyncio._get_running_loop


class Later:
    """What a handler returns to reply once `awaitable` is done, while the actor goes on
    with its next messages: for work that waits on something outside (a round trip to
    Redis), so that many such waits overlap instead of queueing one behind the other.

    The handler does, before returning, whatever must happen in message order; the
    awaitable only finishes it. Its exception goes where a handler's would (to the
    asker, or to the actor's failure handling for a tell).
    """

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable


class BlockingGetOnLoopError(RuntimeError):
    """`LoopFuture.get()` was called on an event loop thread before the result was set.

    Blocking there would freeze the loop, and with it the very actor that is supposed
    to produce the result: a guaranteed deadlock. `await` the future instead.
    """


class NoRunningLoopError(RuntimeError):
    """`LoopActor.start()` was called with no asyncio event loop running in this thread.

    A `LoopActor` runs as a task on the loop that is running when it starts; call
    `start()` from a coroutine or a loop callback.
    """


# ---------------------------------------------------------------------------------------
# Futures
# ---------------------------------------------------------------------------------------

# Set while `LoopFuture.__await__` runs a get hook (from `map`, `join`, `ActorRef.stop`,
# ...): a `get()` on an unfinished LoopFuture then raises `_NotReady` instead of
# blocking, so the awaiting task can wait for that dependency without blocking the loop
# and run the hook again.
_probing_hook: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aiowt_loopfuture_probing_hook", default=False
)


class _NotReady(BaseException):
    # A BaseException, so that a get hook catching `Exception` does not swallow it.
    def __init__(self, future: LoopFuture[Any]) -> None:
        super().__init__()
        self.future = future


def _resolve_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_loop_waiters(waiters: list[asyncio.Future[None]]) -> None:
    running = _get_running_loop()
    for waiter in waiters:
        loop = waiter.get_loop()
        if loop is running:
            _resolve_waiter(waiter)
        else:
            # A closed awaiting loop raises RuntimeError: nobody is left to wake there.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_waiter, waiter)


class LoopFuture(pykka.Future[T]):
    """A pykka `Future` that can be awaited on an event loop and `get()` from threads.

    - `await future` suspends only the awaiting task; it never calls the blocking
      `get()`. It works on any running loop, not only the actor's.
    - `future.get(timeout=...)` blocks the calling thread until the value is set, and
      raises `pykka.Timeout` when the timeout passes (`timeout <= 0` polls).
    - `future.get()` on a thread that is running an event loop, while the value is not
      set yet, raises `BlockingGetOnLoopError` instead of deadlocking. Once the value is
      set, `get()` returns it anywhere.
    - `set()`, `set_exception()` and `set_get_hook()` may be called from any thread; a
      second one raises `queue.Full`, as pykka's futures do.
    - Futures derived with `map`, `filter`, `join`, `reduce` (and `ActorRef.stop()`'s
      result) are awaitable too: the get hook is run without blocking and re-run once
      each `LoopFuture` it depends on is done. A hook that blocks on something other
      than a `LoopFuture` still blocks whoever awaits it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None
        self._exc_info: OptExcInfo | None = None
        self._loop_waiters: list[asyncio.Future[None]] | None = None
        self._thread_waiter: threading.Event | None = None

    def __repr__(self) -> str:
        if self._done:
            state = "failed" if self._exc_info is not None else "done"
        elif self._get_hook is not None:
            state = "derived"
        else:
            state = "pending"
        return f"<LoopFuture {state}>"

    # -- reading -----------------------------------------------------------------------

    def get(self, *, timeout: float | None = None) -> T:
        """Return the value, or raise the exception, blocking this thread if needed.

        Raises:
            BlockingGetOnLoopError: if the value is not set and this thread runs an
                event loop (and `timeout` is not `<= 0`).
            pykka.Timeout: if `timeout` seconds pass without a value.
            Exception: the exception set on the future.

        """
        if not self._done and self._get_hook is None:
            self._block_until_settled(timeout)
        if self._get_hook is not None:
            return super().get(timeout=timeout)
        return self._unwrap()

    def __await__(self) -> Generator[Any, None, T]:
        """Wait for the value without blocking the event loop, then return or raise it."""
        while True:
            if self._done:
                return self._unwrap()
            if self._get_hook is None:
                yield from self._wait_on_loop()
                continue
            token = _probing_hook.set(True)
            try:
                return super().get(timeout=None)
            except _NotReady as not_ready:
                dependency = not_ready.future
            finally:
                _probing_hook.reset(token)
            yield from dependency._wait_on_loop()

    # pykka.Future aliases `__iter__` to *its* blocking `__await__`; keep `yield from`
    # on the non-blocking path too.
    __iter__ = __await__

    def _unwrap(self) -> T:
        exc_info = self._exc_info
        if exc_info is None:
            value: T = self._value
            return value
        exc_type, exc_value, traceback = exc_info
        assert exc_type is not None
        if exc_value is None:
            exc_value = exc_type()
        if exc_value.__traceback__ is not traceback:
            raise exc_value.with_traceback(traceback)
        raise exc_value

    def _block_until_settled(self, timeout: float | None) -> None:
        if _probing_hook.get():
            raise _NotReady(self)
        if timeout is not None and timeout <= 0:
            raise Timeout(f"{timeout} seconds")
        if _get_running_loop() is not None:
            msg = (
                "LoopFuture.get() would block the running event loop until the result "
                "is set (a deadlock if an actor on this loop is to set it); "
                "use `await future` on the loop"
            )
            raise BlockingGetOnLoopError(msg)
        with self._lock:
            if self._done or self._get_hook is not None:
                return
            event = self._thread_waiter
            if event is None:
                event = self._thread_waiter = threading.Event()
        if not event.wait(timeout):
            raise Timeout(f"{timeout} seconds")

    def _wait_on_loop(self) -> Generator[Any, None, None]:
        waiter = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._done or self._get_hook is not None:
                return
            if self._loop_waiters is None:
                self._loop_waiters = [waiter]
            else:
                self._loop_waiters.append(waiter)
        try:
            yield from waiter.__await__()
        finally:
            if not waiter.done() or waiter.cancelled():
                # A cancelled awaiter must not pin its waiter on a long-lived future.
                with self._lock:
                    if self._loop_waiters is not None and waiter in self._loop_waiters:
                        self._loop_waiters.remove(waiter)

    # -- writing -----------------------------------------------------------------------

    def set(self, value: T | None = None) -> None:
        """Set the value and wake every waiter, from any thread.

        Raises:
            queue.Full: if a value, exception or get hook is already set.

        """
        self._settle(value, None)

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Set an exception (default: the one being handled), from any thread.

        Raises:
            queue.Full: if a value, exception or get hook is already set.

        """
        assert exc_info is None or len(exc_info) == 3
        self._settle(None, sys.exc_info() if exc_info is None else exc_info)

    def set_get_hook(self, func: GetHookFunc[T]) -> None:
        """Make `get()` (and `await`) produce `func(timeout)`; wakes current waiters.

        Raises:
            queue.Full: if a value or exception is already set.

        """
        with self._lock:
            if self._done:
                raise queue.Full
            super().set_get_hook(func)
            waiters, event = self._take_waiters()
        self._wake(waiters, event)

    def _settle(self, value: Any, exc_info: OptExcInfo | None) -> None:
        with self._lock:
            if self._done or self._get_hook is not None:
                raise queue.Full
            self._value = value
            self._exc_info = exc_info
            self._done = True
            # Left in place: once done, nothing adds waiters, and leaving them saves
            # work on the path every ask takes.
            waiters = self._loop_waiters
            event = self._thread_waiter
        if event is not None:
            event.set()
        if waiters is not None:
            _wake_loop_waiters(waiters)

    def _take_waiters(self) -> tuple[list[asyncio.Future[None]] | None, threading.Event | None]:
        waiters, self._loop_waiters = self._loop_waiters, None
        event, self._thread_waiter = self._thread_waiter, None
        return waiters, event

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]] | None, event: threading.Event | None) -> None:
        if event is not None:
            event.set()
        if waiters:
            _wake_loop_waiters(waiters)


def _fail_envelope(actor: pykka.Actor, envelope: Envelope[Any]) -> None:
    """Answer an envelope the actor will never handle, as pykka's teardown does."""
    reply_to = envelope.reply_to
    if reply_to is None:
        return
    try:
        if isinstance(envelope.message, _ActorStop):
            # The actor is stopped, which is what the stop request asked for.
            reply_to.set(None)
        else:
            error = ActorDeadError(f"{actor.actor_ref} stopped before handling the message")
            reply_to.set_exception(exc_info=(ActorDeadError, error, None))
    except queue.Full:
        pass


# ---------------------------------------------------------------------------------------
# Inbox
# ---------------------------------------------------------------------------------------


class _LoopInbox:
    """pykka's `ActorInbox` for a `LoopActor`: a deque plus a wake-up future.

    Chosen over `asyncio.Queue`, measured side by side: a slightly faster ask round
    trip, 3-7x the throughput of tells from other threads (one wake-up is scheduled
    per burst, not one `call_soon_threadsafe` per message) and about half the memory
    per idle actor. Envelopes from other threads also land in the deque at once, so
    teardown can answer every one of them: none is left inside a callback that a
    closing loop might drop.
    """

    __slots__ = ("_closed", "_items", "_lock", "_loop", "_waiter", "_wake_pending")

    def __init__(self) -> None:
        self._items: collections.deque[Envelope[Any]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._wake_pending = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def put(self, envelope: Envelope[Any], /) -> None:
        loop = self._loop
        if loop is None or _get_running_loop() is loop:
            # On the actor's own thread (or before start, from the actor's __init__):
            # nothing else can touch the inbox concurrently, so no lock, no
            # call_soon_threadsafe.
            if self._closed:
                self._reject(envelope)
                return
            self._items.append(envelope)
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                _resolve_waiter(waiter)
            return
        with self._lock:
            closed = self._closed
            schedule_wake = not (closed or self._wake_pending)
            if not closed:
                self._items.append(envelope)
                self._wake_pending = True
        if closed:
            self._reject(envelope)
        elif schedule_wake:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:
                # The loop closed without cancelling the actor task (asyncio.run always
                # cancels): the actor will never run again, answer for it.
                self._reject_all()

    def get(self) -> Envelope[Any]:
        """Pop the oldest envelope; raises `queue.Empty` (the actor never blocks here)."""
        try:
            return self._items.popleft()
        except IndexError:
            raise queue.Empty from None

    def empty(self) -> bool:
        return not self._items

    def wait(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Return a future resolved by the next `put` (called only when the deque is empty)."""
        waiter = loop.create_future()
        self._waiter = waiter
        return waiter

    def close(self) -> list[Envelope[Any]]:
        """Refuse further envelopes and return the ones never handled (loop thread only)."""
        with self._lock:
            self._closed = True
            pending = list(self._items)
            self._items.clear()
        return pending

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            _resolve_waiter(waiter)

    @staticmethod
    def _reject(envelope: Envelope[Any]) -> None:
        if envelope.reply_to is None:
            # A `tell` to a dead actor: pykka's `tell` raises ActorDeadError too.
            raise ActorDeadError("actor stopped before the message was delivered")
        error = ActorDeadError("actor stopped before the message was delivered")
        with contextlib.suppress(queue.Full):
            envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))

    def _reject_all(self) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._items)
            self._items.clear()
        for envelope in pending:
            if envelope.reply_to is not None:
                self._reject(envelope)


# ---------------------------------------------------------------------------------------
# Actor
# ---------------------------------------------------------------------------------------


class _StoppedFlag:
    """`threading.Event`'s interface for `actor_stopped`, at a fraction of its cost.

    pykka gives every actor a `threading.Event` (a Condition, a Lock and a 760-byte
    deque): about 1.1 KB and five objects the cyclic GC walks, per session actor. Here
    `is_set()` and `set()` touch one attribute; a real Event is made only for a thread
    that `wait()`s. The flag is set before the Event is looked at, and `wait()` makes
    the Event before it looks at the flag, so a waiter never misses a `set()`.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        event = self._event
        if event is None:
            with _STOPPED_FLAG_LOCK:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
        if self._set:
            return True
        return event.wait(timeout)


_STOPPED_FLAG_LOCK = threading.Lock()

# asyncio keeps only weak references to tasks. A started actor must live until it is
# stopped, like a ThreadingActor's thread keeps it alive, even when nobody holds its
# ref (for instance a tell-only worker that will stop itself).
_running_tasks: set[asyncio.Task[None]] = set()


def _is_fatal_for_process(error: BaseException) -> bool:
    return isinstance(error, KeyboardInterrupt | SystemExit)


class LoopActor(pykka.Actor):
    """A pykka actor whose message loop is an asyncio task on the loop that started it.

    Start it with `LoopActor.start(...)` from code running on an event loop (else
    `NoRunningLoopError`). It then behaves like any pykka actor: `ActorRef.tell`,
    `ask`, `proxy()`, `stop()` and `ActorRegistry` work, from the loop or from other
    threads. Futures it returns are `LoopFuture`s: `await` them on a loop, `.get()` them
    from other threads.

    Messages are handled one at a time, each to completion: if `on_receive`, a proxied
    method, `on_start`, `on_stop` or `on_failure` returns a coroutine (`async def`), it
    is awaited before anything else happens to the actor. That is what makes the
    actor's state safe without locks, `await`s included. Only coroutines are awaited: a
    handler returning a future replies with that future, as in pykka. The flip side of
    one-at-a-time: a handler that awaits an ask to its own actor waits forever.

    Failures follow pykka: an exception in an `ask` goes to the asker and the actor
    keeps running; an exception in a `tell` is logged and stops the actor (then
    `on_failure` runs). Cancellation of the task (the loop shutting down) stops the
    actor and answers every pending `ask` with `pykka.ActorDeadError`.
    """

    register_globally: ClassVar[bool] = True
    """Whether `start()` puts the actor in `pykka.ActorRegistry`.

    The registry is a list: unregistering is O(n) in the number of registered actors.
    Set this to False for actors that exist by the thousands (one per session) and are
    reached through their refs; starting and stopping them then stays O(1).
    """

    actor_inbox: _LoopInbox

    # Whether this instance is in ActorRegistry; an instance attribute only when True,
    # so unregistered actors do not pay for it.
    _registered: bool = False
    _loop: asyncio.AbstractEventLoop
    _actor_task: asyncio.Task[None] | None = None
    _later: set[asyncio.Task[None]] | None = None
    """Replies still to come (`Later`); made on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # pykka's Actor.__init__, with a `_StoppedFlag` instead of a `threading.Event`
        # (pykka only calls is_set() and set() on it; ActorRef copies the reference).
        self.actor_urn = uuid.uuid4().urn
        self.actor_inbox = self._create_actor_inbox()  # type: ignore[assignment]
        self.actor_stopped = _StoppedFlag()  # type: ignore[assignment]
        self._actor_ref = ActorRef(self)

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> ActorRef[Self]:
        """Create the actor with `cls(*args, **kwargs)` and start its task on this loop.

        Registers the actor in `pykka.ActorRegistry` unless `register_globally` is False.

        Raises:
            NoRunningLoopError: if no event loop is running in this thread.

        """
        # pykka's start() registers the actor before starting its loop; checking the
        # loop first keeps a failed start from leaving a dead actor in the registry.
        _require_running_loop(cls)
        obj = cls(*args, **kwargs)
        assert obj.actor_ref is not None, (
            "Actor.__init__() have not been called. "
            "Did you forget to call super() in your override?"
        )
        if cls.register_globally:
            ActorRegistry.register(obj.actor_ref)
            obj._registered = True
        obj._start_actor_loop()
        return obj.actor_ref

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return _LoopInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return LoopFuture()

    def _start_actor_loop(self) -> None:
        loop = _require_running_loop(type(self))
        self._loop = loop
        self.actor_inbox.bind(loop)
        task = loop.create_task(self._run_actor_task())
        self._actor_task = task
        _running_tasks.add(task)

    # -- hooks: each may be a plain or an `async def` method ---------------------------
    # The annotations say what the runtime accepts. mypy still checks an override
    # against pykka.Actor too, so an `async def on_start` needs `# type: ignore[override]`.

    def on_start(self) -> Awaitable[None] | None:  # type: ignore[override]
        """Run before the first message, inside the actor task; may be `async def`.

        An exception here is logged and stops the actor (pending asks get
        `pykka.ActorDeadError`).
        """
        return None

    def on_stop(self) -> Awaitable[None] | None:  # type: ignore[override]
        """Run when the actor is stopped by `stop()`, inside the actor; may be `async def`.

        The stop request's future is answered after this returns (or its coroutine
        finishes). Not run when the actor stops because of a failure or a cancellation.
        """
        return None

    def on_failure(  # type: ignore[override]
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> Awaitable[None] | None:
        """Run after an unhandled exception in a `tell` stopped the actor; may be async."""
        return None

    # -- the loop ----------------------------------------------------------------------

    async def _run_actor_task(self) -> None:
        envelope: Envelope[Any] | None = None
        try:
            await self._call_hook(self.on_start)
            inbox = self.actor_inbox
            items = inbox._items
            loop = self._loop
            stopped = self.actor_stopped
            while not stopped.is_set():
                if not items:
                    await inbox.wait(loop)
                    continue
                envelope = items.popleft()
                try:
                    response = self._handle_receive(envelope.message)
                    if inspect.iscoroutine(response):
                        response = await response
                except Exception:
                    await self._handle_envelope_failure(envelope, sys.exc_info())
                else:
                    if type(response) is Later:
                        self._reply_later(envelope, response.awaitable)
                    elif envelope.reply_to is not None:
                        # Hot path: a bare try is free, contextlib.suppress is not.
                        try:  # noqa: SIM105
                            envelope.reply_to.set(response)
                        except queue.Full:
                            # Someone else answered the future; the reply has nowhere to go.
                            pass
                envelope = None
        except (asyncio.CancelledError, GeneratorExit):
            # The task is being torn down (loop shutdown, explicit cancel, or the
            # coroutine being closed): nothing more may be awaited, everyone waiting
            # must hear ActorDeadError now.
            if envelope is not None:
                _fail_envelope(self, envelope)
            raise
        except BaseException as error:
            # pykka: a BaseException in a handler stops this actor and all others.
            log.warning(
                "fatal error in actor, stopping all actors", actor=str(self), error=repr(error)
            )
            if envelope is not None:
                _fail_envelope(self, envelope)
            self._mark_stopped()
            # Non-blocking: blocking here would freeze this loop and its actors.
            ActorRegistry.stop_all(block=False)
            if _is_fatal_for_process(error):
                raise
        finally:
            self._actor_loop_teardown()
            if self._actor_task is not None:
                _running_tasks.discard(self._actor_task)

    def _reply_later(self, envelope: Envelope[Any], awaitable: Awaitable[Any]) -> None:
        if self._later is None:
            self._later = set()
        task = self._loop.create_task(self._finish_later(envelope, awaitable))
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _finish_later(self, envelope: Envelope[Any], awaitable: Awaitable[Any]) -> None:
        try:
            response = await awaitable
        except asyncio.CancelledError:
            _fail_envelope(self, envelope)
            raise
        except Exception:
            await self._handle_envelope_failure(envelope, sys.exc_info())
            return
        if envelope.reply_to is not None:
            with contextlib.suppress(queue.Full):
                envelope.reply_to.set(response)

    async def _handle_envelope_failure(self, envelope: Envelope[Any], exc_info: OptExcInfo) -> None:
        if envelope.reply_to is not None:
            log.info("exception returned to caller", actor=str(self), exc_info=exc_info)
            with contextlib.suppress(queue.Full):
                envelope.reply_to.set_exception(exc_info)
            return
        self._handle_failure(*exc_info)
        try:
            result = self.on_failure(*exc_info)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._handle_failure(*sys.exc_info())

    async def _call_hook(self, hook: Any) -> None:
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._handle_failure(*sys.exc_info())

    def _actor_loop_teardown(self) -> None:
        self._mark_stopped()
        for envelope in self.actor_inbox.close():
            _fail_envelope(self, envelope)

    # -- stopping and failing: registry-aware versions of pykka's ----------------------

    def _handle_receive(self, message: Any) -> Any:
        if isinstance(message, _ActorStop):
            # pykka's `_stop()` runs `on_stop()` synchronously; ours may await it, and
            # the stop request is answered only once it is done.
            return self._stop_async()
        return super()._handle_receive(message)

    async def _stop_async(self) -> None:
        self._mark_stopped()
        await self._call_hook(self.on_stop)

    def _stop(self) -> None:
        # Only reached when called directly (our loop routes stop requests to
        # `_stop_async`); an async on_stop then runs as a task of its own.
        self._mark_stopped()
        try:
            result = self.on_stop()
        except Exception:
            self._handle_failure(*sys.exc_info())
            return
        if inspect.isawaitable(result):
            awaitable = result
            task = self._loop.create_task(self._call_hook(lambda: awaitable))
            _running_tasks.add(task)
            task.add_done_callback(_running_tasks.discard)

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        log.error(
            "unhandled exception in actor",
            actor=str(self),
            exc_info=(exception_type, exception_value, traceback),
        )
        self._mark_stopped()

    def _mark_stopped(self) -> None:
        if self.actor_stopped.is_set():
            return
        if self._registered:
            self._registered = False
            ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()


def _require_running_loop(actor_class: type[pykka.Actor]) -> asyncio.AbstractEventLoop:
    loop = _get_running_loop()
    if loop is None:
        msg = (
            f"{actor_class.__name__}.start() needs a running asyncio event loop in this "
            "thread: the actor runs as a task on it. Call start() from a coroutine."
        )
        raise NoRunningLoopError(msg)
    return loop
