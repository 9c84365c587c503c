"""Timer and recorder: when a session started, how it ended, how long it took, its bytes.

Seed 003's ``TimerMiddleware`` and ``RecorderMiddleware``, for sessions. What they
measure is published in typed keys of the `SessionContext`, so any middleware outside
them (an access log, a stats reporter of the user's own) can read it after
``await call_next(ctx)`` returns or raises:

- `START_TIME`: wall-clock time the CONNECT arrived (set on the way in by `Timer`);
- `ELAPSED`: seconds from the CONNECT to the end of the session, or to its refusal;
- `STATUS`: the CONNECT response status (200, or the rejection's 4xx/5xx);
- `BYTES_IN` / `BYTES_OUT`: payload bytes of datagrams and streams, both directions;
- `RECORD`: all of it, and more, as one `SessionRecord`.

The record is computed once per session, by the innermost observing middleware to see
the end, and reused by every one further out: the access log, the metrics and the
status page report the same numbers for the same session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING

import structlog

from aiowt.transport.context import Key, SessionContext
from aiowt.transport.errors import Rejected
from aiowt.transport.events import SessionAccepted, SessionEvent
from aiowt.transport.session import SessionTap

from .chain import CallNext

if TYPE_CHECKING:
    from aiowt.transport.session import Session

__all__ = [
    "BYTES_IN",
    "BYTES_OUT",
    "ELAPSED",
    "RECORD",
    "START_TIME",
    "STATUS",
    "Recorder",
    "SessionRecord",
    "Timer",
    "observe",
    "rejected_by",
    "session_record",
    "start_time",
    "when_accepted",
]

log = structlog.get_logger("aiowt.middleware")

START_TIME: Key[datetime] = Key("aiowt.start_time")
"""Wall-clock time (UTC) the CONNECT request arrived."""

ELAPSED: Key[float] = Key("aiowt.elapsed")
"""Seconds from the CONNECT request to the end of the session (or to its refusal)."""

STATUS: Key[int] = Key("aiowt.status")
"""The CONNECT response status: 200 for an accepted session, else the refusal's."""

BYTES_IN: Key[int] = Key("aiowt.bytes_in")
"""Payload bytes received from the peer (datagrams and streams)."""

BYTES_OUT: Key[int] = Key("aiowt.bytes_out")
"""Payload bytes sent to the peer (datagrams and streams)."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Everything an observer wants to know about one finished (or refused) session."""

    start_time: datetime
    """Wall-clock time (UTC) the CONNECT request arrived."""
    elapsed: float
    """Seconds from the CONNECT request to the end of the session (or its refusal)."""
    handshake_seconds: float
    """Seconds from the CONNECT request to the verdict (accepted or refused)."""
    status: int
    """The CONNECT response status."""
    reason: str = ""
    """The refusal's reason; empty for an accepted session."""
    rejected_by: str | None = None
    """The middleware that refused the session, when it was refused by a `Rejected`."""
    error: str | None = None
    """The type name of the exception that ended the session or the chain, if any
    (never ``"Rejected"``: a refusal is a verdict), or ``"NoVerdict"``."""
    duration: float | None = None
    """Seconds from acceptance to the end; None when the session was never accepted."""
    bytes_in: int = 0
    bytes_out: int = 0
    close_code: int | None = None
    close_reason: str = ""
    closed_by_peer: bool | None = None

    @property
    def accepted(self) -> bool:
        return self.duration is not None

    @property
    def rejected(self) -> bool:
        """Refused at the handshake (any status that is not 2xx)."""
        return not self.accepted

    @property
    def failed(self) -> bool:
        """Ended by an error (a handler or middleware exception, a cancellation, no verdict).

        A refusal by `Rejected` is not a failure, whatever its status: it is a verdict.
        """
        return self.error is not None


RECORD: Key[SessionRecord] = Key("aiowt.session_record")
"""The `SessionRecord` of the session, once it has ended or been refused."""


def start_time(ctx: SessionContext) -> datetime:
    """The wall-clock time the CONNECT arrived (computed once, then kept in `START_TIME`)."""
    if START_TIME in ctx:
        return ctx.get(START_TIME)
    # `started_at` is monotonic (immune to clock steps); the wall clock is derived once.
    wall = time.time() - (time.monotonic() - ctx.started_at)
    value = datetime.fromtimestamp(wall, tz=UTC)
    ctx.set(START_TIME, value)
    return value


def session_record(ctx: SessionContext, error: BaseException | None = None) -> SessionRecord:
    """The session's `SessionRecord`: computed on the first call, then the same one.

    Call it after ``call_next`` has returned or raised, with the exception (if any).
    It also fills `ELAPSED`, `STATUS`, `BYTES_IN` and `BYTES_OUT`.
    """
    if RECORD in ctx:
        return ctx.get(RECORD)
    now = time.monotonic()
    reason = ""
    rejecter: str | None = None
    failure: str | None = None
    if isinstance(error, Rejected):
        reason, rejecter = error.reason, rejected_by(error)
    elif error is not None:
        failure = type(error).__name__
    if ctx.status is not None:
        status = ctx.status
    elif isinstance(error, Rejected):
        status = error.status
    elif isinstance(error, asyncio.CancelledError):
        status, reason = 503, "server shutting down"  # what the server answers then
    elif error is not None:
        status, reason = 500, "internal server error"  # what the server answers then
    else:
        # A middleware returned without calling call_next or raising: the server
        # answers 500 "no verdict" (see `aiowt.middleware.chain`).
        status, reason, failure = 500, "no verdict", "NoVerdict"
    accepted_at = ctx.accepted_at
    session = ctx.session
    info = ctx.close_info
    record = SessionRecord(
        start_time=start_time(ctx),
        elapsed=now - ctx.started_at,
        handshake_seconds=(accepted_at if accepted_at is not None else now) - ctx.started_at,
        status=status,
        reason=reason,
        rejected_by=rejecter,
        error=failure,
        duration=None if accepted_at is None else now - accepted_at,
        bytes_in=session.bytes_in if session is not None else 0,
        bytes_out=session.bytes_out if session is not None else 0,
        close_code=info.code if info is not None else None,
        close_reason=info.reason if info is not None else "",
        closed_by_peer=info.by_peer if info is not None else None,
    )
    ctx.set(RECORD, record)
    ctx.set(ELAPSED, record.elapsed)
    ctx.set(STATUS, record.status)
    ctx.set(BYTES_IN, record.bytes_in)
    ctx.set(BYTES_OUT, record.bytes_out)
    return record


async def observe(
    ctx: SessionContext, call_next: CallNext
) -> tuple[SessionRecord, BaseException | None]:
    """Run the rest of the chain; return its `SessionRecord` and the exception it raised.

    The caller reports, then re-raises the exception (``if error: raise error``), so a
    refusal or a failure goes on to the server's boundary unchanged. Report without
    awaiting: after a cancellation, the task must not suspend again.
    """
    try:
        await call_next(ctx)
    except GeneratorExit:
        raise  # the coroutine is being closed: nothing may run after this
    except BaseException as error:
        return session_record(ctx, error), error
    return session_record(ctx), None


def rejected_by(rejection: Rejected) -> str | None:
    """The name of the middleware that raised `rejection`, as `middleware_name` gives it.

    Read from the rejection's ``middleware`` attribute when the chain sets one, else from
    its traceback: the frame the chain's step called into is the middleware's own.
    """
    named = getattr(rejection, "middleware", None)
    if isinstance(named, str):
        return named
    return _caller_of_innermost_step(rejection.__traceback__)


def _caller_of_innermost_step(tb: TracebackType | None) -> str | None:
    found: str | None = None
    after_step = False
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_qualname == "_bind.<locals>.step" and code.co_filename.endswith("chain.py"):
            after_step = True
        elif after_step:
            owner = tb.tb_frame.f_locals.get("self")
            found = type(owner).__name__ if owner is not None else code.co_qualname
            after_step = False
        tb = tb.tb_next
    return found


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


class Timer:
    """Sets `START_TIME` on the way in and `ELAPSED` when the session ends (seed 003).

    Handlers and inner middleware can read `START_TIME` during the session; outer
    middleware read `ELAPSED` (and the rest of `RECORD`) after ``call_next``.
    """

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        start_time(ctx)
        _, error = await observe(ctx, call_next)
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return "Timer()"


class Recorder:
    """Sets `STATUS`, `BYTES_IN`, `BYTES_OUT` (and `RECORD`) when the session ends (seed 003)."""

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        _, error = await observe(ctx, call_next)
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return "Recorder()"
