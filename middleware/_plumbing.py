"""How the observing middleware see a session: `observe` its end, `when_accepted`.

Every middleware that reports on sessions (logs, access logs, metrics, status, tracing,
webhooks) is written the same way::

    async def __call__(self, ctx, call_next):
        async with observe(ctx, self._report):
            await call_next(ctx)

`observe` reports once the rest of the chain is over, however it ended (the session
closed, was refused, failed, or the server is shutting down), and lets any exception
go on to the server's boundary unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog
from pykka import ActorRef

from aiowt.transport import Key, Session, SessionContext, SessionTap
from aiowt.transport.events import SessionAccepted, SessionEvent

from .record import SessionRecord, session_record

__all__ = ["Report", "observe", "report_once", "when_accepted"]

log = structlog.get_logger("aiowt.middleware")

Report = Callable[[SessionContext, SessionRecord, BaseException | None], None]
"""Called with the context, the session's record, and the exception that ended the chain."""


class _Observation:
    __slots__ = ("_ctx", "_report")

    def __init__(self, ctx: SessionContext, report: Report) -> None:
        self._ctx = ctx
        self._report = report

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is GeneratorExit:
            return  # the coroutine is being closed: nothing may run after this
        self._report(self._ctx, session_record(self._ctx, error), error)


def observe(ctx: SessionContext, report: Report) -> _Observation:
    """An async context manager around the rest of the chain that calls `report` at its end.

    `report(ctx, record, error)` gets the context, the session's `SessionRecord` and
    the exception that ends the body (None if none); the exception then propagates
    unchanged (a refusal or a failure reaches the server's boundary as it was).
    `report` is synchronous on purpose: after a cancellation the task must not suspend
    again.
    """
    return _Observation(ctx, report)


class _OnAccept(SessionTap):
    """A tap that only runs a callback when the session is accepted."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[Session], None]) -> None:
        self._callback = callback

    def observe(self, session: Session, event: SessionEvent) -> bool:
        if type(event) is SessionAccepted:
            try:
                self._callback(session)
            except Exception:
                # Reporting must never break a session the server has just accepted.
                log.exception("on-accept callback failed", callback=repr(self._callback))
        return True


def when_accepted(ctx: SessionContext, callback: Callable[[Session], None]) -> None:
    """Call `callback(session)` when (if) the server accepts this session.

    It runs synchronously in the accepting step, inside the rest of the chain (so with
    any contextvars bound around ``call_next``); it must not block, and an exception
    from it is logged, not raised.
    """
    ctx.taps.append(_OnAccept(callback))


_REPORTED: Key[set[tuple[str, str]]] = Key("aiowt.reported")
"""(collector urn, fact) pairs already reported for this session."""


def report_once(ctx: SessionContext, metrics: ActorRef[Any], fact: str) -> bool:
    """True the first time `fact` about this session is claimed for collector `metrics`.

    What keeps a fact counted once per session and collector however many middleware
    could report it (see `aiowt.actors.metric_names`): the first to claim it reports it.
    """
    reported = ctx.get(_REPORTED, None)
    if reported is None:
        reported = set()
        ctx.set(_REPORTED, reported)
    claim = (metrics.actor_urn, fact)
    if claim in reported:
        return False
    reported.add(claim)
    return True
