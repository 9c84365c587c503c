"""The middleware contract and the chain that runs it.

A middleware is an async callable ``(ctx, call_next) -> None``::

    async def timing(ctx: SessionContext, call_next: CallNext) -> None:
        started = time.monotonic()
        try:
            await call_next(ctx)  # the rest of the chain, then the session itself
        finally:
            log.info("session ended", seconds=time.monotonic() - started)

Configurable middleware are small classes: options are validated in ``__init__``,
``async def __call__(self, ctx, call_next)`` does the work, nothing per-session is kept
on ``self`` (it lives in ``ctx`` or in an actor), and ``__repr__`` is readable.

Order follows seed 000: ``build_chain([A, B], h)`` runs A → B → h → B-after → A-after,
where "after" is the code after ``await call_next(ctx)``. The terminal step accepts the
session and returns only when it has ended, so after-code sees the whole session.

What a middleware may do:

- call ``call_next(ctx)`` exactly once and await it: the session goes on;
- raise `aiowt.transport.errors.Rejected` before calling it: the session is refused
  with that status; exceptions from further in propagate out through every earlier
  middleware's ``try/finally``;
- return without calling ``call_next`` and without raising: nothing is accepted, and
  the server's boundary treats the session as rejected (it answers 500, "no verdict").
  That decision belongs to the boundary, not to the chain; a middleware that means
  to refuse should raise `Rejected` with a real status.

Calling ``call_next`` a second time, or after the middleware has returned, raises
`UsageError`: the terminal step accepts the session, and accepting twice is a bug.

Two optional parts of the contract, which the server looks for on each middleware:

- `UsesServices`: a middleware that reports to or counts in shared actors gets the
  server's `Services` (its collector and registries) before the first session, and a
  name for its place in the server (``use[0]``, ``/chat/{room}[1]``) that keeps its
  counts apart from another instance's. A ref passed to it explicitly wins.
- `Closable`: a middleware that holds something beyond a session (an actor it started,
  a port it serves, deliveries in flight) is closed once, at shutdown, after every
  session has ended.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol, runtime_checkable

from aiowt.actors import Services
from aiowt.transport import Rejected, SessionContext, UsageError

from .admission import ADMISSION, Admission, SessionLimit

__all__ = [
    "CallNext",
    "Chain",
    "Closable",
    "Middleware",
    "UsesServices",
    "build_chain",
    "middleware_name",
]

CallNext = Callable[[SessionContext], Awaitable[None]]
"""The rest of the chain: await it once to run everything after this middleware."""

Middleware = Callable[[SessionContext, CallNext], Awaitable[None]]
"""An async callable ``(ctx, call_next) -> None``; see the module docstring."""


@runtime_checkable
class Closable(Protocol):
    """A middleware with something to release at shutdown (see the module docstring)."""

    async def aclose(self) -> None:
        """Release what the middleware holds; called once, after the sessions ended."""


@runtime_checkable
class UsesServices(Protocol):
    """A middleware that talks to shared actors (see the module docstring)."""

    def use_services(self, services: Services, name: str) -> None:
        """Use `services` for what was not given explicitly; `name` is its place."""


_PENDING: Final = 0
_CALLED: Final = 1
_RETURNED: Final = 2


class Chain:
    """A composed, frozen middleware chain; call it with a context to run a session.

    Made by `build_chain`. Calling it returns the first step's awaitable directly, so
    the chain object itself adds no coroutine frame. The middleware tuple and the
    terminal are fixed at construction and cannot be changed afterwards. It has no
    ``__len__`` on purpose: a chain without middleware must still be truthy.
    """

    __slots__ = ("_admission", "_entry", "_middleware", "_terminal")

    _admission: Admission
    _entry: CallNext
    _middleware: tuple[Middleware, ...]
    _terminal: CallNext

    def __init__(self, middleware: tuple[Middleware, ...], terminal: CallNext) -> None:
        entry = terminal
        # Built from the inside out so each step closes over the one after it; a call
        # then walks pre-bound closures with no lists or lookups on the way.
        for mw in reversed(middleware):
            entry = _bind(mw, entry)
        object.__setattr__(self, "_middleware", middleware)
        object.__setattr__(self, "_terminal", terminal)
        object.__setattr__(self, "_entry", entry)
        # The session limits are admitted together, at the first of them to run.
        limits: list[SessionLimit] = []
        for mw in middleware:
            if isinstance(mw, SessionLimit):
                limits.append(mw)
        object.__setattr__(self, "_admission", Admission(limits))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Chain is frozen; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Chain is frozen; cannot delete {name!r}")

    def __call__(self, ctx: SessionContext) -> Awaitable[None]:
        """Run the chain for one session; completes when the session has ended."""
        if self._admission:
            ctx.set(ADMISSION, self._admission)
        return self._entry(ctx)

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware, outermost first."""
        return self._middleware

    @property
    def admission(self) -> Admission:
        """The chain's session limits, admitted together (see `aiowt.middleware.admission`)."""
        return self._admission

    @property
    def terminal(self) -> CallNext:
        """The step after the last middleware (the one that accepts the session)."""
        return self._terminal

    @property
    def names(self) -> tuple[str, ...]:
        """`middleware_name` of each middleware, outermost first."""
        return tuple(middleware_name(mw) for mw in self._middleware)

    def __repr__(self) -> str:
        steps = [*self.names, middleware_name(self._terminal)]
        return f"Chain({' → '.join(steps)})"


def build_chain(middleware: Sequence[Middleware], terminal: CallNext) -> Chain:
    """Compose `middleware` around `terminal`, once, into a frozen `Chain`.

    ``build_chain([A, B], h)(ctx)`` runs A → B → h → B-after → A-after. The sequence is
    copied into a tuple, so changing it later does not change the chain. Raises
    `UsageError` for an entry that cannot be a middleware: not callable, a class
    instead of an instance of it, or a callable that cannot take ``(ctx, call_next)``.
    """
    chain = tuple(middleware)
    for mw in chain:
        _check_middleware(mw)
    if not callable(terminal):
        raise UsageError(f"the terminal step must be callable, got {terminal!r}")
    return Chain(chain, terminal)


def middleware_name(mw: object) -> str:
    """A stable short name for logs and metrics.

    The class name for configurable middleware (instances), ``__qualname__`` for
    functions and methods, the wrapped function's name for `functools.partial`.
    """
    if isinstance(mw, functools.partial):
        return middleware_name(mw.func)
    if isinstance(mw, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        return str(mw.__qualname__)
    if isinstance(mw, type):
        return mw.__qualname__
    return type(mw).__name__


def _check_middleware(mw: object) -> None:
    if isinstance(mw, type):
        # The usual slip: use(RequestID) instead of use(RequestID()).
        raise UsageError(
            f"{mw.__qualname__} is a class; pass an instance, e.g. {mw.__qualname__}(...)"
        )
    if not callable(mw):
        raise UsageError(f"middleware must be an async callable (ctx, call_next), got {mw!r}")
    try:
        signature = inspect.signature(mw)
    except (TypeError, ValueError):
        return  # Some builtins and C callables have no signature; trust them.
    try:
        signature.bind(None, None)
    except TypeError as exc:
        raise UsageError(
            f"middleware {middleware_name(mw)} cannot be called as (ctx, call_next): {exc}"
        ) from None


def _bind(mw: Middleware, next_step: CallNext) -> CallNext:
    """The step that runs `mw` with a guarded `call_next` leading to `next_step`."""
    name = middleware_name(mw)

    async def step(ctx: SessionContext) -> None:
        state = _PENDING

        # A plain function returning next_step's coroutine: the guard costs one
        # closure per step per session and no extra coroutine frame.
        def call_next(next_ctx: SessionContext) -> Awaitable[None]:
            nonlocal state
            if state != _PENDING:
                when = "twice" if state == _CALLED else "after it returned"
                raise UsageError(
                    f"middleware {name} called call_next {when}; the rest of the chain"
                    " (and the step that accepts the session) must run exactly once"
                )
            state = _CALLED
            return next_step(next_ctx)

        try:
            result = mw(ctx, call_next)
            if not inspect.isawaitable(result):
                raise UsageError(
                    f"middleware {name} returned {type(result).__name__}, not an awaitable;"
                    " define it with async def"
                )
            await result
        except Rejected as rejection:
            # The innermost step a refusal passes through is its author's.
            if rejection.middleware is None:
                rejection.middleware = name
            raise
        finally:
            state = _RETURNED

    step.__qualname__ = f"step[{name}]"
    return step
