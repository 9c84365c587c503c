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

Each middleware takes optional service refs. In a server, what was not given comes
from the server's `Services`, and each limit counts under its own name there (its place
in the server), so two limits never share a count by accident; used on its own, a limit
starts its own registry on first use and `aclose()` stops it. They report refusals and
excess to `metrics` (or the server's collector); used on their own without `metrics`,
they report nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import ClassVar, Literal

import pykka

from aiowt.actors import (
    MetricsCollector,
    RateLimitRegistry,
    ServiceHandle,
    Services,
    SessionRegistry,
    tell_quietly,
)
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import Inc
from aiowt.actors.ratelimit import Claim
from aiowt.actors.sessions import Attach, Register, Unregister
from aiowt.transport import CloseCode, Key, Rejected, SessionContext, UsageError
from aiowt.transport.events import (
    DatagramReceived,
    SessionAccepted,
    SessionEvent,
    StreamClosed,
    StreamDataReceived,
    StreamOpened,
)
from aiowt.transport.session import Session, SessionTap

from ._options import check_int, check_seconds, retry_after
from .admission import admitted
from .chain import CallNext
from .metrics import report_rejection

__all__ = [
    "SESSION_BUCKET",
    "DepthGuard",
    "MaxSessions",
    "PerPathRateLimit",
    "RateLimit",
    "RouteRateLimit",
    "SessionBucket",
    "TokenBucket",
]

MetricsRef = pykka.ActorRef[MetricsCollector]


def _metrics_handle(metrics: MetricsRef | None) -> ServiceHandle[MetricsCollector]:
    # Reports go to `.started` (given, or the server's): a limit never starts a collector.
    return ServiceHandle(metrics, MetricsCollector.start, "metrics")


# --- concurrent sessions ------------------------------------------------------------------


class _SessionCap:
    """Shared body of the session limits: a slot in the rate-limit registry, admitted with
    the chain's other limits (see `aiowt.middleware.admission`), released at the end."""

    scope: ClassVar[str]
    status: ClassVar[int] = 429
    _limit_name: ClassVar[str] = "limit"

    def __init__(
        self,
        limit: int,
        *,
        registry: pykka.ActorRef[RateLimitRegistry] | None = None,
        metrics: MetricsRef | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self.limit = check_int(self._limit_name, limit)
        self.retry_after = check_seconds("retry_after", retry_after)
        self.metrics = _metrics_handle(metrics)
        self.service: ServiceHandle[RateLimitRegistry] = ServiceHandle(
            registry, RateLimitRegistry.start, "registry"
        )
        self.counts_as = self.scope
        """The registry scope this limit counts under (its place, in a server's registry)."""

    def use_services(self, services: Services, name: str) -> None:
        if not self.service.given:
            self.service.bind(services.rate_limits)
            self.counts_as = f"{self.scope}@{name}"
        self.metrics.bind(services.metrics)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._limit_name}={self.limit}, "
            f"retry_after={self.retry_after:g}, service={self.service!r})"
        )

    # --- the SessionLimit protocol ---------------------------------------------------------
    def claim(self, ctx: SessionContext) -> Claim:
        return Claim(self.counts_as, self._key(ctx), self.limit)

    def refusal(self, ctx: SessionContext) -> Rejected:
        report_rejection(ctx, self.metrics.started, type(self).__name__, self.status)
        return Rejected(
            self.status, self._reason(self._key(ctx)), headers=[retry_after(self.retry_after)]
        )

    def registry(self) -> pykka.ActorRef[RateLimitRegistry]:
        return self.service.ref()

    def _key(self, ctx: SessionContext) -> str:
        raise NotImplementedError

    def _reason(self, key: str) -> str:
        raise NotImplementedError

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        async with admitted(ctx, self):
            await call_next(ctx)

    async def aclose(self) -> None:
        """Stop the registry if this middleware started it."""
        await self.service.stop()


class RateLimit(_SessionCap):
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


class RouteRateLimit(_SessionCap):
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


class PerPathRateLimit(_SessionCap):
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


class MaxSessions(_SessionCap):
    """At most `max_sessions` live sessions through it; else 503.

    The cap is a slot in the rate-limit registry (`slots`), admitted with the chain's
    other limits. Each session admitted is also registered in the `SessionRegistry`
    (`registry`): before it is accepted, attached to its transport session once accepted
    (so the registry can look it up and broadcast to it), and unregistered when it ends.
    It is registered for its user (`ToUser`) when authentication put one in
    ``ctx.identity``: a str, or a mapping's ``"sub"``, ``"user"`` or ``"name"``.
    """

    scope = "sessions"
    status = 503
    _limit_name = "max_sessions"

    def __init__(
        self,
        max_sessions: int,
        *,
        registry: pykka.ActorRef[SessionRegistry] | None = None,
        slots: pykka.ActorRef[RateLimitRegistry] | None = None,
        metrics: MetricsRef | None = None,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(max_sessions, registry=slots, metrics=metrics, retry_after=retry_after)
        self.sessions: ServiceHandle[SessionRegistry] = ServiceHandle(
            registry, SessionRegistry.start, "registry"
        )

    @property
    def max_sessions(self) -> int:
        return self.limit

    def use_services(self, services: Services, name: str) -> None:
        super().use_services(services, name)
        self.sessions.bind(services.sessions)

    def __repr__(self) -> str:
        return (
            f"MaxSessions(max_sessions={self.limit}, retry_after={self.retry_after:g}, "
            f"registry={self.sessions!r})"
        )

    def _key(self, ctx: SessionContext) -> str:
        return ""

    def _reason(self, key: str) -> str:
        return f"server at capacity ({self.limit} sessions)"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        async with admitted(ctx, self):
            ref = self.sessions.ref()
            session_id = ctx.session_id
            # Told, not asked: the cap was taken above, this only lists the session.
            user = _user_of(ctx.identity)
            tell_quietly(ref, Register(session_id, None, ctx.remote_ip, ctx.path, user))
            ctx.taps.append(_AttachTap(ref, session_id))
            try:
                await call_next(ctx)
            finally:
                tell_quietly(ref, Unregister(session_id))

    async def aclose(self) -> None:
        """Stop the registries if this middleware started them."""
        await super().aclose()
        await self.sessions.stop()


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
        labels = {"kind": kind, "action": self.on_excess}
        tell_quietly(self._metrics, Inc(names.TOKEN_BUCKET_EXCESS.name, labels=labels))
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
        self.rate = check_seconds("rate", rate)
        self.burst = check_int("burst", burst)
        if on_excess not in ("drop", "close"):
            raise UsageError(f"on_excess must be 'drop' or 'close', got {on_excess!r}")
        if not callable(clock):
            raise UsageError("clock must be a callable returning seconds")
        self.on_excess: Excess = on_excess
        self.metrics = _metrics_handle(metrics)
        self._clock = clock

    def use_services(self, services: Services, name: str) -> None:
        self.metrics.bind(services.metrics)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst}, on_excess={self.on_excess!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        bucket = SessionBucket(
            self.rate, self.burst, self.on_excess, self.metrics.started, self._clock
        )
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
            labels = {"middleware": "DepthGuard"}
            tell_quietly(self._metrics, Inc(names.STREAMS_REFUSED.name, labels=labels))
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
        self.max_concurrent = check_int("max_concurrent", max_concurrent)
        self.metrics = _metrics_handle(metrics)

    def use_services(self, services: Services, name: str) -> None:
        self.metrics.bind(services.metrics)

    def __repr__(self) -> str:
        return f"DepthGuard(max_concurrent={self.max_concurrent})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ctx.taps.append(_DepthTap(self.max_concurrent, self.metrics.started))
        await call_next(ctx)


def _user_of(identity: object) -> str:
    """Who `ctx.identity` names, for the registry's `ToUser`; "" when it names nobody."""
    if isinstance(identity, str):
        return identity
    if isinstance(identity, Mapping):
        for field in ("sub", "user", "name"):
            value = identity.get(field)
            if isinstance(value, str) and value:
                return value
    return ""
