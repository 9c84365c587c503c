"""Limits, enforced: concurrent sessions per IP, route and path, a global cap, message
rates, and concurrent streams per session.

The session limits refuse on the CONNECT response, before anything is accepted:
`RateLimit`, `RouteRateLimit`, `PerPathRateLimit` answer 429, `MaxSessions` 503, each
with a reason and a `retry-after` header. They count in shared actors
(`RateLimitRegistry`, `SessionRegistry`) through ask/tell only, and give the slot back
in a `finally` around `call_next`, so a session's slot is released however it ends
(closed, aborted, refused further down the chain, crashed, cancelled).

The per-session limits are taps at the transport: `TokenBucket` meters every datagram
and stream chunk the peer sends, `DepthGuard` refuses peer streams past its limit. Their
state lives in a tap object made per session inside `__call__`, never on `self`.

Each middleware takes an optional service ref; without one it starts its own service on
first use (on the running loop) and `aclose()` stops it. With `metrics` (a
`MetricsCollector` ref) they report rejections and excess; without, they report nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import ClassVar, Final, Literal

import pykka

from aiowt.actors._service import ServiceHandle, ask_future, tell_quietly
from aiowt.actors.metrics import Inc, MetricsCollector
from aiowt.actors.ratelimit import Acquire, RateLimitRegistry, Release
from aiowt.actors.sessions import Attach, Register, SessionRegistry, Unregister
from aiowt.transport.codes import CloseCode
from aiowt.transport.context import Key, SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.events import (
    DatagramReceived,
    SessionAccepted,
    SessionEvent,
    StreamClosed,
    StreamDataReceived,
    StreamOpened,
)
from aiowt.transport.session import Session, SessionTap

from .chain import CallNext

__all__ = [
    "EXCESS_METRIC",
    "REFUSED_STREAMS_METRIC",
    "REJECTIONS_METRIC",
    "SESSION_BUCKET",
    "DepthGuard",
    "MaxSessions",
    "PerPathRateLimit",
    "RateLimit",
    "RouteRateLimit",
    "SessionBucket",
    "TokenBucket",
    "report_rejection",
]

MetricsRef = pykka.ActorRef[MetricsCollector]

REJECTIONS_METRIC: Final = "aiowt_rejections_total"
EXCESS_METRIC: Final = "aiowt_token_bucket_excess_total"
REFUSED_STREAMS_METRIC: Final = "aiowt_streams_refused_total"


def report_rejection(metrics: MetricsRef | None, middleware: str, status: int) -> None:
    """Count one refused CONNECT in `aiowt_rejections_total{middleware, status}`."""
    tell_quietly(
        metrics,
        Inc(
            REJECTIONS_METRIC,
            labels={"middleware": middleware, "status": str(status)},
            help="Sessions refused on the CONNECT response, by middleware and status.",
        ),
    )


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _check_metrics(metrics: object) -> MetricsRef | None:
    if metrics is not None and not isinstance(metrics, pykka.ActorRef):
        raise UsageError("metrics must be a MetricsCollector ActorRef or None")
    return metrics


def _retry_after(seconds: float) -> tuple[str, str]:
    # Retry-After takes whole seconds; never advertise 0 (an instant retry storm).
    return ("retry-after", str(max(1, math.ceil(seconds))))


async def _granted(future: pykka.Future[bool], on_cancel: Callable[[], object]) -> bool:
    """Await an acquire; if we are cancelled meanwhile, undo it (it may still be granted).

    The undo is a tell from the same thread as the ask, so the service handles it after
    the acquire; an undo of something never granted is a no-op.
    """
    try:
        return await future
    except BaseException:
        on_cancel()
        raise


# --- concurrent sessions ------------------------------------------------------------------


class _ConcurrencyLimit:
    """Shared body of the per-key limits: acquire in the registry, release in `finally`."""

    scope: ClassVar[str]
    _limit_name: ClassVar[str] = "limit"

    def __init__(
        self,
        limit: int,
        *,
        registry: pykka.ActorRef[RateLimitRegistry] | None = None,
        metrics: MetricsRef | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self.limit = _check_limit(self._limit_name, limit)
        self.retry_after = _check_seconds("retry_after", retry_after)
        self.metrics = _check_metrics(metrics)
        self.service: ServiceHandle[RateLimitRegistry] = ServiceHandle(
            registry, RateLimitRegistry.start, "registry"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._limit_name}={self.limit}, "
            f"retry_after={self.retry_after:g}, service={self.service!r})"
        )

    def _key(self, ctx: SessionContext) -> str:
        raise NotImplementedError

    def _reason(self, key: str) -> str:
        raise NotImplementedError

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ref = self.service.ref()
        key = self._key(ctx)
        holder = ctx.session_id
        release = Release(self.scope, key, holder)
        granted = await _granted(
            ask_future(ref, Acquire(self.scope, key, holder, self.limit)),
            lambda: tell_quietly(ref, release),
        )
        if not granted:
            report_rejection(self.metrics, type(self).__name__, 429)
            raise Rejected(429, self._reason(key), headers=[_retry_after(self.retry_after)])
        try:
            await call_next(ctx)
        finally:
            tell_quietly(ref, release)

    async def aclose(self) -> None:
        """Stop the registry if this middleware started it."""
        await self.service.stop()


class RateLimit(_ConcurrencyLimit):
    """At most `max_per_ip` concurrent sessions per client IP (not ip:port); else 429."""

    scope = "ip"
    _limit_name = "max_per_ip"

    def __init__(
        self,
        max_per_ip: int,
        *,
        registry: pykka.ActorRef[RateLimitRegistry] | None = None,
        metrics: MetricsRef | None = None,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(max_per_ip, registry=registry, metrics=metrics, retry_after=retry_after)

    @property
    def max_per_ip(self) -> int:
        return self.limit

    def _key(self, ctx: SessionContext) -> str:
        return ctx.remote_ip

    def _reason(self, key: str) -> str:
        return f"too many concurrent sessions from {key} (limit {self.limit})"


class RouteRateLimit(_ConcurrencyLimit):
    """At most `max_concurrent` concurrent sessions per route pattern; else 429."""

    scope = "route"
    _limit_name = "max_concurrent"

    def __init__(
        self,
        max_concurrent: int,
        *,
        registry: pykka.ActorRef[RateLimitRegistry] | None = None,
        metrics: MetricsRef | None = None,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(
            max_concurrent, registry=registry, metrics=metrics, retry_after=retry_after
        )

    @property
    def max_concurrent(self) -> int:
        return self.limit

    def _key(self, ctx: SessionContext) -> str:
        return ctx.route_pattern

    def _reason(self, key: str) -> str:
        return f"too many concurrent sessions on route {key} (limit {self.limit})"


class PerPathRateLimit(_ConcurrencyLimit):
    """At most `max_per_path` concurrent sessions per resolved path; else 429."""

    scope = "path"
    _limit_name = "max_per_path"

    def __init__(
        self,
        max_per_path: int,
        *,
        registry: pykka.ActorRef[RateLimitRegistry] | None = None,
        metrics: MetricsRef | None = None,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(max_per_path, registry=registry, metrics=metrics, retry_after=retry_after)

    @property
    def max_per_path(self) -> int:
        return self.limit

    def _key(self, ctx: SessionContext) -> str:
        return ctx.path

    def _reason(self, key: str) -> str:
        return f"too many concurrent sessions on {key} (limit {self.limit})"


class _AttachTap(SessionTap):
    """Hands the accepted transport session to the registry (for lookups and broadcast)."""

    __slots__ = ("_ref", "_session_id")

    def __init__(self, ref: pykka.ActorRef[SessionRegistry], session_id: str) -> None:
        self._ref = ref
        self._session_id = session_id

    def observe(self, session: Session, event: SessionEvent) -> bool:
        if type(event) is SessionAccepted:
            tell_quietly(self._ref, Attach(self._session_id, session))
        return True


class MaxSessions:
    """At most `max_sessions` live sessions in the `SessionRegistry`; else 503.

    Registers each session before it is accepted (that is where the cap is checked),
    attaches the transport session once accepted (so the registry can look it up and
    broadcast to it), and unregisters it when it ends.
    """

    def __init__(
        self,
        max_sessions: int,
        *,
        registry: pykka.ActorRef[SessionRegistry] | None = None,
        metrics: MetricsRef | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self.max_sessions = _check_limit("max_sessions", max_sessions)
        self.retry_after = _check_seconds("retry_after", retry_after)
        self.metrics = _check_metrics(metrics)
        self.service: ServiceHandle[SessionRegistry] = ServiceHandle(
            registry, SessionRegistry.start, "registry"
        )

    def __repr__(self) -> str:
        return (
            f"MaxSessions(max_sessions={self.max_sessions}, retry_after={self.retry_after:g}, "
            f"service={self.service!r})"
        )

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ref = self.service.ref()
        session_id = ctx.session_id
        unregister = Unregister(session_id)
        registered = await _granted(
            ask_future(ref, Register(session_id, self.max_sessions, ctx.remote_ip, ctx.path)),
            lambda: tell_quietly(ref, unregister),
        )
        if not registered:
            report_rejection(self.metrics, "MaxSessions", 503)
            raise Rejected(
                503,
                f"server at capacity ({self.max_sessions} sessions)",
                headers=[_retry_after(self.retry_after)],
            )
        ctx.taps.append(_AttachTap(ref, session_id))
        try:
            await call_next(ctx)
        finally:
            tell_quietly(ref, unregister)

    async def aclose(self) -> None:
        """Stop the registry if this middleware started it."""
        await self.service.stop()


# --- message rate -------------------------------------------------------------------------

Excess = Literal["drop", "close"]


class SessionBucket(SessionTap):
    """One session's token bucket, metering what the peer sends (a tap).

    Every datagram and every non-empty stream chunk costs one token; tokens refill at
    `rate` per second up to `burst`. A stream chunk is what the transport delivers at
    once (one or more frames, or part of one), so on streams the bucket meters
    deliveries, a close and cheap stand-in for messages.

    Excess, with `on_excess="drop"`: the datagram is dropped; a stream is reset with
    `StreamErrorCode.REFUSED` (stream bytes cannot be dropped without corrupting the
    framing). With `"close"`: the session is closed with `CloseCode.RATE_LIMITED`.
    Either way it is counted in `dropped` and reported to the metrics.
    """

    __slots__ = ("_clock", "_last", "_metrics", "_tokens", "burst", "dropped", "on_excess", "rate")

    def __init__(
        self,
        rate: float,
        burst: int,
        on_excess: Excess,
        metrics: MetricsRef | None,
        clock: Callable[[], float],
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.on_excess: Excess = on_excess
        self.dropped = 0
        self._metrics = metrics
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def __repr__(self) -> str:
        return f"<SessionBucket tokens={self.tokens:.2f}/{self.burst} dropped={self.dropped}>"

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        return min(self.burst, self._tokens + (self._clock() - self._last) * self.rate)

    def take(self) -> bool:
        """Spend a token if there is one."""
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        return False

    def observe(self, session: Session, event: SessionEvent) -> bool:
        if isinstance(event, DatagramReceived):
            return self.take() or self._excess(session, "datagram")
        if isinstance(event, StreamDataReceived):
            # A bare FIN carries no message.
            return not event.data or self.take() or self._excess(session, "stream")
        return True

    def _excess(self, session: Session, kind: str) -> bool:
        self.dropped += 1
        tell_quietly(
            self._metrics,
            Inc(
                EXCESS_METRIC,
                labels={"kind": kind, "action": self.on_excess},
                help="Datagrams and stream chunks over a session's token bucket.",
            ),
        )
        if self.on_excess == "close":
            session.close(CloseCode.RATE_LIMITED, "message rate limit exceeded")
        return False


SESSION_BUCKET: Key[SessionBucket] = Key("aiowt.token_bucket")
"""The session's `SessionBucket`, set by `TokenBucket`."""


class TokenBucket:
    """Meter what each session's peer sends: `rate` messages per second, bursts of `burst`.

    Per session (the bucket is a tap made for each session, kept under
    `SESSION_BUCKET` in the context). See `SessionBucket` for what counts and what
    `on_excess` does.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        on_excess: Excess = "drop",
        metrics: MetricsRef | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = _check_seconds("rate", rate)
        self.burst = _check_limit("burst", burst)
        if on_excess not in ("drop", "close"):
            raise UsageError(f"on_excess must be 'drop' or 'close', got {on_excess!r}")
        if not callable(clock):
            raise UsageError("clock must be a callable returning seconds")
        self.on_excess: Excess = on_excess
        self.metrics = _check_metrics(metrics)
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst}, on_excess={self.on_excess!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        bucket = SessionBucket(self.rate, self.burst, self.on_excess, self.metrics, self._clock)
        ctx.set(SESSION_BUCKET, bucket)
        ctx.taps.append(bucket)
        await call_next(ctx)


# --- concurrent streams -------------------------------------------------------------------


class _DepthTap(SessionTap):
    """Counts a session's open peer streams; refuses one past the limit."""

    __slots__ = ("_limit", "_metrics", "_open")

    def __init__(self, limit: int, metrics: MetricsRef | None) -> None:
        self._limit = limit
        self._metrics = metrics
        self._open: set[int] = set()

    def observe(self, session: Session, event: SessionEvent) -> bool:
        if isinstance(event, StreamOpened):
            return self._opened(event.stream.stream_id)
        if isinstance(event, StreamClosed):
            # A set, not a counter: closes of streams we never counted (our own, refused
            # ones) change nothing.
            self._open.discard(event.stream.stream_id)
        return True

    def _opened(self, stream_id: int) -> bool:
        if len(self._open) >= self._limit:
            tell_quietly(
                self._metrics,
                Inc(
                    REFUSED_STREAMS_METRIC,
                    labels={"middleware": "DepthGuard"},
                    help="Peer streams refused (reset with StreamErrorCode.REFUSED).",
                ),
            )
            return False
        self._open.add(stream_id)
        return True


class DepthGuard:
    """At most `max_concurrent` peer-opened streams open at once per session.

    A stream is open (its handler running) from its first byte until both directions
    have ended. One more is refused at once: the transport sends STOP_SENDING and
    RESET_STREAM with `StreamErrorCode.REFUSED` (0x2001), so the peer's read fails with
    that code instead of the stream waiting in a queue.
    """

    def __init__(self, max_concurrent: int, *, metrics: MetricsRef | None = None) -> None:
        self.max_concurrent = _check_limit("max_concurrent", max_concurrent)
        self.metrics = _check_metrics(metrics)

    def __repr__(self) -> str:
        return f"DepthGuard(max_concurrent={self.max_concurrent})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ctx.taps.append(_DepthTap(self.max_concurrent, self.metrics))
        await call_next(ctx)
