"""The supervised base of shared services, the message conventions, and lazy service handles.

Message style (one, used by every service): messages are frozen dataclasses, sent with
`ActorRef.tell` (nobody waits) or `ActorRef.ask` (the reply is a `LoopFuture`). A
message that expects a reply derives from `Request[R]`, where `R` is the reply's type,
so `await ask(ref, Acquire(...))` is typed. Services expose no public methods: pykka
proxies of a service see nothing to call, so there is exactly one way in.

Supervision: pykka stops an actor whose `tell` handler raises. A shared service must not
die that way (one bad message would take the rate limiter away from every session), so
`Service` changes that rule for its subclasses:

- A `tell` whose handler raises is logged (with the traceback) and counted in
  `failed_messages`; the service keeps serving the next message.
- An `ask` whose handler raises sends the exception back to the asker; the service
  keeps serving.
- A message of a type the service has no handler for raises `UnknownMessage` (a
  `UsageError`), by the two rules above.
- State after a failed message is the state before it. Services keep that promise by
  construction rather than by copying state: every handler validates its message first
  and only then changes state, in steps that cannot raise. A failed message therefore
  changes nothing, and the services' tests check this for each one.

A `BaseException` (KeyboardInterrupt, SystemExit) is not survived: pykka's rule for
those (stop every actor) stands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import pykka
import structlog
from pykka import ActorDeadError, ActorRef

from aiowt.transport.errors import UsageError

from ._runtime import LoopActor, LoopFuture

if TYPE_CHECKING:
    from pykka._envelope import Envelope
    from pykka._types import OptExcInfo

__all__ = [
    "Request",
    "Service",
    "ServiceHandle",
    "UnknownMessage",
    "ask",
    "ask_future",
    "handles",
    "tell_quietly",
]

log = structlog.get_logger("aiowt.actors")

R = TypeVar("R", covariant=True)
T = TypeVar("T")
S = TypeVar("S", bound="Service")
F = TypeVar("F", bound=Callable[..., Any])


class Request(Generic[R]):
    """Base of messages that are asked: `R` is the type of the reply.

    Subclasses are frozen dataclasses; the base holds no data.
    """

    __slots__ = ()


class UnknownMessage(UsageError):
    """A service was sent a message it has no handler for."""

    def __init__(self, service: str, message: object) -> None:
        super().__init__(
            f"{service} has no handler for {type(message).__qualname__} messages "
            f"(got {message!r:.200}); send one of its message dataclasses"
        )
        self.service = service
        self.message = message


def handles(message_type: type[Any]) -> Callable[[F], F]:
    """Mark a `Service` method as the handler of `message_type` messages."""

    def mark(method: F) -> F:
        method._aiowt_handles = message_type  # type: ignore[attr-defined]
        return method

    return mark


class Service(LoopActor):
    """A `LoopActor` that survives failing messages; the base of aiowt's shared services.

    Subclasses write one method per message type, marked `@handles(MessageType)`, and
    keep to the module's rule: validate, then change state in steps that cannot raise.
    Handlers are plain methods (one message is handled completely before the next).

    Services stay out of pykka's `ActorRegistry` (the middleware hold their refs), and
    run on the loop that started them: start them from a coroutine.
    """

    register_globally: ClassVar[bool] = False

    _handlers: ClassVar[dict[type[Any], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type[Any], str] = {}
        # Walk the MRO from the base down so a subclass's handler wins.
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                message_type = getattr(value, "_aiowt_handles", None)
                if message_type is not None:
                    handlers[message_type] = name
        cls._handlers = handlers

    def __init__(self) -> None:
        super().__init__()
        self.failed_messages = 0
        """Messages whose handler raised (asks and tells); they changed nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.actor_urn[-12:]}>"

    def on_receive(self, message: Any) -> Any:
        """Dispatch `message` by its exact type; `UnknownMessage` for anything else."""
        name = self._handlers.get(type(message))
        if name is None:
            raise UnknownMessage(type(self).__name__, message)
        return getattr(self, name)(message)

    async def _handle_envelope_failure(self, envelope: Envelope[Any], exc_info: OptExcInfo) -> None:
        # LoopActor's rule (inherited from pykka) stops the actor when a tell fails;
        # a shared service logs it and goes on. Asks keep the usual rule: the asker
        # gets the exception.
        self.failed_messages += 1
        if envelope.reply_to is not None:
            await super()._handle_envelope_failure(envelope, exc_info)
            return
        log.error(
            "message failed; the service keeps serving, its state unchanged",
            service=type(self).__name__,
            message=type(envelope.message).__qualname__,
            exc_info=exc_info,
        )


async def ask(ref: ActorRef[Any], message: Request[T]) -> T:
    """Ask `ref` on the event loop and await the typed reply without blocking the loop."""
    return cast(T, await ref.ask(message, block=False))


def ask_future(ref: ActorRef[Any], message: Request[T]) -> LoopFuture[T]:
    """Ask `ref` and return the `LoopFuture`: `await` it on a loop, `.get()` it in a thread."""
    return cast(LoopFuture[T], ref.ask(message, block=False))


def tell_quietly(ref: ActorRef[Any] | None, message: object) -> bool:
    """Tell `ref` if it is alive; False if it is None or stopped.

    For reports (metrics, outcomes) that must never break a session: a stopped service
    is a shutdown in progress, not the session's problem.
    """
    if ref is None:
        return False
    try:
        ref.tell(message)
    except ActorDeadError:
        return False
    return True


class ServiceHandle(Generic[S]):
    """The service a middleware talks to: the ref it was given, its server's, or its own.

    In that order. A given ref is used as is and never stopped by the middleware; a
    server hands its own (its `Services`) through `bind`. With neither (a middleware
    used on its own, as in a unit test), the service is started by `factory` on first
    use, on the running loop (a `LoopActor` needs one), and started again if it has
    stopped since (for instance because the loop it ran on is gone); `stop()` stops it.
    """

    __slots__ = ("_bound", "_factory", "_given", "_own", "what")

    def __init__(self, given: ActorRef[S] | None, factory: Callable[[], ActorRef[S]], what: str):
        if given is not None and not isinstance(given, pykka.ActorRef):
            raise UsageError(f"{what} must be a pykka ActorRef (Service.start() returns one)")
        self._given = given
        self._bound: ActorRef[S] | None = None
        self._factory = factory
        self._own: ActorRef[S] | None = None
        self.what = what

    def __repr__(self) -> str:
        if self._given is not None:
            return f"ServiceHandle({self.what}, given)"
        if self._bound is not None:
            return f"ServiceHandle({self.what}, the server's)"
        state = "started" if self._own is not None and self._own.is_alive() else "not started"
        return f"ServiceHandle({self.what}, {state})"

    @property
    def given(self) -> bool:
        """True when the middleware was given its ref explicitly."""
        return self._given is not None

    @property
    def started(self) -> ActorRef[S] | None:
        """The ref in use, if there is one yet (never starts anything)."""
        return self._given or self._bound or self._own

    def bind(self, ref: ActorRef[S]) -> None:
        """Use `ref` (a server's service) unless a ref was given explicitly."""
        if not isinstance(ref, pykka.ActorRef):
            raise UsageError(f"{self.what} must be a pykka ActorRef, got {ref!r}")
        self._bound = ref

    def ref(self) -> ActorRef[S]:
        """The service's ref, starting it if this handle owns it and it is not running."""
        if self._given is not None:
            return self._given
        if self._bound is not None:
            return self._bound
        own = self._own
        if own is None or not own.is_alive():
            if own is not None:
                log.warning("service had stopped; starting a new one", service=self.what)
            own = self._own = self._factory()
        return own

    async def stop(self) -> None:
        """Stop the service if this handle started it; a given ref is left running."""
        own, self._own = self._own, None
        if own is None or not own.is_alive():
            return
        with contextlib.suppress(ActorDeadError):
            await own.stop(block=False)
