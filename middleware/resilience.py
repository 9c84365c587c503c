"""Resilience: a circuit breaker, failure containment, and session lifetimes.

- `CircuitBreaker` asks the breaker actor before each session (503 while open) and
  reports how the session went.
- `Recover` contains failures: logged with the traceback and the session's ids, never
  propagated; before acceptance they become a 500.
- `Timeout`, `SessionTimeoutWithWarning` and `IdleTimeout` close sessions with
  `CloseCode.TIMEOUT` / `IDLE_TIMEOUT`. Their timers live in a tap made per session,
  started when the session is accepted and cancelled when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from typing import Any

import pykka
import structlog

from aiowt.actors import (
    Breaker,
    MetricsCollector,
    ServiceHandle,
    Services,
    ask_future,
    tell_quietly,
)
from aiowt.actors.breaker import (
    Admission,
    Admit,
    SessionFailed,
    SessionNotRun,
    SessionSucceeded,
    validate_breaker_settings,
)
from aiowt.transport import (
    AiowtError,
    CloseCode,
    Rejected,
    SessionClosedError,
    SessionContext,
    UsageError,
)
from aiowt.transport.events import (
    DatagramReceived,
    SessionAccepted,
    SessionClosed,
    SessionEvent,
    StreamDataReceived,
    StreamOpened,
)
from aiowt.transport.session import Session, SessionTap

from ._options import check_seconds, retry_after
from .chain import CallNext
from .metrics import report_error, report_rejection

MetricsRef = pykka.ActorRef[MetricsCollector]

__all__ = [
    "CircuitBreaker",
    "IdleTimeout",
    "Recover",
    "SessionTimeoutWithWarning",
    "Timeout",
]

log = structlog.get_logger("aiowt.middleware")

_DEFAULTS: dict[str, Any] = {"threshold": 5, "window": 60.0, "cooldown": 30.0, "half_open_max": 1}


# --- circuit breaker ----------------------------------------------------------------------


class CircuitBreaker:
    """Refuse sessions with 503 ("circuit open", `retry-after`) while the breaker is open.

    Backed by the `aiowt.actors.Breaker` actor: give one with `breaker=`, or the
    settings (`threshold` failures within `window` seconds open it for `cooldown`
    seconds; then `half_open_max` probe sessions at a time) and it starts its own.

    A session counts as failed when an exception comes out of the rest of the chain
    (the handler raised, or a middleware did), or when the server closed it with a
    code in `failure_codes` (default: `INTERNAL_ERROR` only). Codes that mean the
    peer misbehaved or left (`PROTOCOL_ERROR`, `MALFORMED_MESSAGE`, `RATE_LIMITED`,
    `IDLE_TIMEOUT`, `ABORTED`, ...), closes by the peer, and a `SessionClosedError`
    (the handler sent on a session closed meanwhile) are not failures: a bad or flaky
    client must not be able to open the circuit for everyone. A session refused further
    down the chain (`Rejected`) or cancelled by shutdown is not counted at all.
    """

    def __init__(
        self,
        threshold: int | None = None,
        window: float | None = None,
        cooldown: float | None = None,
        half_open_max: int | None = None,
        *,
        probe_timeout: float | None = None,
        breaker: pykka.ActorRef[Breaker] | None = None,
        failure_codes: Collection[int] = (CloseCode.INTERNAL_ERROR,),
        metrics: MetricsRef | None = None,
        name: str = "default",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        given = {
            "threshold": threshold,
            "window": window,
            "cooldown": cooldown,
            "half_open_max": half_open_max,
            "probe_timeout": probe_timeout,
        }
        settings = {k: v for k, v in given.items() if v is not None}
        if breaker is not None and settings:
            raise UsageError(
                f"give either a breaker ref or its settings, not both ({', '.join(settings)})"
            )
        if isinstance(failure_codes, str | bytes) or not all(
            isinstance(code, int) for code in failure_codes
        ):
            raise UsageError(f"failure_codes must be a collection of ints, got {failure_codes!r}")
        self.failure_codes = frozenset(int(code) for code in failure_codes)
        self.metrics: ServiceHandle[MetricsCollector] = ServiceHandle(
            metrics, MetricsCollector.start, "metrics"
        )
        self.name = name
        self.settings = {**_DEFAULTS, **settings} if breaker is None else {}
        if breaker is None:
            # Validate now, with the actor's own checks, rather than at the first session.
            validate_breaker_settings(**self.settings)

        def start() -> pykka.ActorRef[Breaker]:
            return Breaker.start(
                **self.settings, clock=clock, metrics=self.metrics.started, name=name
            )

        self.service: ServiceHandle[Breaker] = ServiceHandle(breaker, start, "breaker")

    def __repr__(self) -> str:
        if not self.settings:
            return f"CircuitBreaker(breaker=<given>, name={self.name!r})"
        options = ", ".join(f"{k}={v:g}" for k, v in self.settings.items())
        return f"CircuitBreaker({options}, name={self.name!r})"

    def use_services(self, services: Services, name: str) -> None:
        self.metrics.bind(services.metrics)

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ref = self.service.ref()
        future = ask_future(ref, Admit())
        try:
            admission = await future
        except asyncio.CancelledError:
            # We may have been admitted as a probe: give the slot back once we know.
            _release_later(ref, future)
            raise
        if not admission.allowed:
            report_rejection(ctx, self.metrics.started, "CircuitBreaker", 503)
            raise Rejected(503, "circuit open", headers=[retry_after(admission.retry_after)])
        outcome: type[SessionSucceeded | SessionFailed | SessionNotRun] = SessionNotRun
        try:
            await call_next(ctx)
        except (Rejected, asyncio.CancelledError):
            raise
        except SessionClosedError:
            # The handler met a session that had closed meanwhile (for instance closed
            # by a TokenBucket because the peer flooded it): a race, not a server fault,
            # and counting it would let a misbehaving client open the circuit.
            outcome = SessionSucceeded if ctx.session is not None else SessionNotRun
            raise
        except Exception:
            outcome = SessionFailed
            raise
        else:
            if ctx.session is None:
                outcome = SessionFailed  # no verdict: the server answers 500
            elif self._error_close(ctx):
                outcome = SessionFailed
            else:
                outcome = SessionSucceeded
        finally:
            tell_quietly(ref, outcome(admission.probe_id))

    def _error_close(self, ctx: SessionContext) -> bool:
        info = ctx.close_info
        return info is not None and not info.by_peer and info.code in self.failure_codes

    async def aclose(self) -> None:
        """Stop the breaker actor if this middleware started it."""
        await self.service.stop()


def _release_later(ref: pykka.ActorRef[Any], future: pykka.Future[Admission]) -> None:
    async def release() -> None:
        with contextlib.suppress(Exception):
            admission = await future
            if admission.allowed:
                tell_quietly(ref, SessionNotRun(admission.probe_id))

    task = asyncio.get_running_loop().create_task(release())
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


# --- failure containment ------------------------------------------------------------------


class Recover:
    """Contain exceptions from the rest of the chain (outermost is the place for it).

    After acceptance (the handler raised, or an inner middleware's after-code did): the
    session is already closed with `INTERNAL_ERROR` by the handler actor (Recover
    closes it if not), the exception is logged with its traceback and the session's
    ids, counted in `aiowt_session_errors_total`, and swallowed. Before acceptance it
    becomes `Rejected(500, "internal error")`. `Rejected` and cancellation pass through.

    Stream handlers are hooks of the session's handler actor, so their exceptions are
    the session's: they close that session, not just the stream.
    """

    def __init__(self, *, metrics: MetricsRef | None = None) -> None:
        self.metrics: ServiceHandle[MetricsCollector] = ServiceHandle(
            metrics, MetricsCollector.start, "metrics"
        )

    def __repr__(self) -> str:
        return "Recover()"

    def use_services(self, services: Services, name: str) -> None:
        self.metrics.bind(services.metrics)

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        try:
            await call_next(ctx)
        except Rejected:
            raise
        except Exception as error:
            accepted = ctx.session is not None
            report_error(ctx, self.metrics.started, accepted=accepted)
            if not accepted:
                log.error("middleware failed before acceptance", exc_info=error, **ctx.ids)
                raise Rejected(500, "internal error") from error
            session = ctx.session
            if session is not None and not session.closed:
                session.close(CloseCode.INTERNAL_ERROR, "internal error")
            log.error("session failed", exc_info=error, **ctx.ids)


# --- lifetimes ----------------------------------------------------------------------------


class _LifetimeTap(SessionTap):
    """Timers for one session: each fires once, all are cancelled when it ends."""

    __slots__ = ("_handles", "_plan")

    def __init__(self, plan: list[tuple[float, Callable[[Session], None]]]) -> None:
        self._plan = plan
        self._handles: list[asyncio.TimerHandle] = []

    def observe(self, session: Session, event: SessionEvent) -> bool:
        kind = type(event)
        if kind is SessionAccepted:
            loop = asyncio.get_running_loop()
            self._handles = [
                loop.call_later(delay, action, session) for delay, action in self._plan
            ]
        elif kind is SessionClosed:
            self.cancel()
        return True

    def cancel(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles = []


def _closer(code: CloseCode, reason: str) -> Callable[[Session], None]:
    def close(session: Session) -> None:
        if not session.closed:
            session.close(code, reason)

    return close


class Timeout:
    """Close each session `seconds` after it was accepted, with `CloseCode.TIMEOUT`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = check_seconds("seconds", seconds)

    def __repr__(self) -> str:
        return f"Timeout({self.seconds:g})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        tap = _LifetimeTap([(self.seconds, _closer(CloseCode.TIMEOUT, "session timeout"))])
        ctx.taps.append(tap)
        try:
            await call_next(ctx)
        finally:
            tap.cancel()


class SessionTimeoutWithWarning:
    """Like `Timeout`, but `warning_before` seconds ahead the peer gets a warning datagram.

    The warning is one msgpack datagram: `{"type": "timeout_warning", "seconds_left":
    warning_before}`. Then, at `timeout`, the session is closed with `CloseCode.TIMEOUT`.
    A warning that cannot be sent (session closed meanwhile) is skipped.
    """

    def __init__(self, timeout: float, warning_before: float) -> None:
        self.timeout = check_seconds("timeout", timeout)
        self.warning_before = check_seconds("warning_before", warning_before)
        if self.warning_before >= self.timeout:
            raise UsageError(
                f"warning_before ({warning_before}) must be shorter than timeout ({timeout})"
            )

    def __repr__(self) -> str:
        return (
            f"SessionTimeoutWithWarning(timeout={self.timeout:g}, "
            f"warning_before={self.warning_before:g})"
        )

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        tap = _LifetimeTap(
            [
                (self.timeout - self.warning_before, self._warn),
                (self.timeout, _closer(CloseCode.TIMEOUT, "session timeout")),
            ]
        )
        ctx.taps.append(tap)
        try:
            await call_next(ctx)
        finally:
            tap.cancel()

    def _warn(self, session: Session) -> None:
        with contextlib.suppress(AiowtError):
            session.send_datagram_message(
                {"type": "timeout_warning", "seconds_left": self.warning_before}
            )


_INPUT = frozenset({DatagramReceived, StreamOpened, StreamDataReceived})
"""What the peer sends, for `IdleTimeout`."""


class _IdleTap(SessionTap):
    """One timer per session, re-armed lazily: activity only records the time."""

    __slots__ = ("_handle", "_last", "_loop", "_seconds", "_session")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: Session | None = None

    def observe(self, session: Session, event: SessionEvent) -> bool:
        kind = type(event)
        if kind in _INPUT:
            if self._loop is not None:
                self._last = self._loop.time()
        elif kind is SessionAccepted:
            self._loop = loop = asyncio.get_running_loop()
            self._session = session
            self._last = loop.time()
            self._handle = loop.call_at(self._last + self._seconds, self._check)
        elif kind is SessionClosed:
            self.cancel()
        return True

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._session = None

    def _check(self) -> None:
        loop, session = self._loop, self._session
        if loop is None or session is None:
            return
        deadline = self._last + self._seconds
        if loop.time() >= deadline:
            self._handle = None
            if not session.closed:
                session.close(CloseCode.IDLE_TIMEOUT, "idle timeout")
        else:
            self._handle = loop.call_at(deadline, self._check)


class IdleTimeout:
    """Close a session with `CloseCode.IDLE_TIMEOUT` after `seconds` without input.

    Input is anything the peer sends that reaches this tap: datagrams, new streams and
    stream data (taps run in middleware order, so traffic dropped by an earlier tap,
    such as a `TokenBucket` listed before, is not seen). What the server sends does not
    count.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = check_seconds("seconds", seconds)

    def __repr__(self) -> str:
        return f"IdleTimeout({self.seconds:g})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        tap = _IdleTap(self.seconds)
        ctx.taps.append(tap)
        try:
            await call_next(ctx)
        finally:
            tap.cancel()
