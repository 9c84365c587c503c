"""`SessionRecord`: everything an observing middleware learns about one session.

What a session's observers (access logs, metrics, status, tracing, webhooks) report is
computed once per session, by the innermost observer to see its end, and reused by
every one further out, so they all report the same numbers for the same session. It is
also published in typed keys of the `SessionContext`, for any middleware outside them
to read after ``await call_next(ctx)`` returns or raises:

- `START_TIME`: wall-clock time the CONNECT arrived;
- `ELAPSED`: seconds from the CONNECT to the end of the session, or to its refusal;
- `STATUS`: the CONNECT response status (200, or the rejection's 4xx/5xx);
- `BYTES_IN` / `BYTES_OUT`: payload bytes of datagrams and streams, both directions;
- `RECORD`: all of it, and more, as one `SessionRecord`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiowt.transport import Key, Rejected, SessionContext

__all__ = [
    "BYTES_IN",
    "BYTES_OUT",
    "ELAPSED",
    "RECORD",
    "START_TIME",
    "STATUS",
    "SessionRecord",
    "session_record",
    "start_time",
]

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
        reason, rejecter = error.reason, error.middleware
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
