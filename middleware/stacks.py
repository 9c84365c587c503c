"""Ready-made middleware stacks (seed 003's idea) in seed 000's recommended order.

The order, outermost first, and why:

1. `Recover` — contains what escapes everything inside it;
2. `RequestID` — so every later line and response carries the id;
3. the logger — logs with the request id, and sees every refusal further in;
4. (`Metrics`, when a collector is given — counts every verdict further in);
5. `RateLimit` — refuses excess cheaply, before authentication spends anything;
6. the auth slot — your authenticator(s), if any;
7. `MaxSessions` — the global cap, counted only for sessions that got this far.

``server.use(*stacks.prod(auth=BearerAuth(verify)))`` and the like. Each function
returns a fresh list of new middleware (so two servers never share one by accident);
`max_per_ip=None` or `max_sessions=None` leaves that limit out. With `metrics` (a
`MetricsCollector` ref), `Metrics` is added and `Recover`, `RateLimit` and
`MaxSessions` report into the same collector; serve it with `PrometheusMetrics`.

- `common()`: the order above, with `Logger` (structured session logs).
- `dev()`: a coloured `AccessLog` line per session instead (`DEV_LOG_FORMAT`), with
  the ids bound for every log line (`LogContext`).
- `prod()`: `Logger` and an `AccessLog` in Combined Log Format, and `Compress`
  (gzip or deflate, for clients that offer it) innermost, as seed 003's production
  stack has gzip.
"""

from __future__ import annotations

from collections.abc import Sequence

import pykka

from aiowt.actors import MetricsCollector

from .chain import Middleware
from .compress import Compress
from .limits import MaxSessions, RateLimit
from .logging import COMBINED_LOG_FORMAT, DEV_LOG_FORMAT, AccessLog, EventLogger, LogContext, Logger
from .metrics import Metrics
from .request_id import RequestID
from .resilience import Recover

__all__ = ["common", "dev", "prod"]

MetricsRef = pykka.ActorRef[MetricsCollector]


def _build(
    loggers: Sequence[Middleware],
    *,
    auth: Middleware | Sequence[Middleware] | None,
    max_per_ip: int | None,
    max_sessions: int | None,
    metrics: MetricsRef | None,
    inner: Sequence[Middleware] = (),
) -> list[Middleware]:
    stack: list[Middleware] = [Recover(metrics=metrics), RequestID(), *loggers]
    if metrics is not None:
        stack.append(Metrics(metrics))
    if max_per_ip is not None:
        stack.append(RateLimit(max_per_ip, metrics=metrics))
    if auth is not None:
        stack.extend([auth] if callable(auth) else auth)
    if max_sessions is not None:
        stack.append(MaxSessions(max_sessions, metrics=metrics))
    stack.extend(inner)
    return stack


def common(
    *,
    auth: Middleware | Sequence[Middleware] | None = None,
    max_per_ip: int | None = 100,
    max_sessions: int | None = 10_000,
    metrics: MetricsRef | None = None,
    logger: EventLogger | None = None,
) -> list[Middleware]:
    """Recover, RequestID, Logger, [Metrics], RateLimit, auth, MaxSessions."""
    return _build(
        [Logger(logger)],
        auth=auth,
        max_per_ip=max_per_ip,
        max_sessions=max_sessions,
        metrics=metrics,
    )


def dev(
    *,
    auth: Middleware | Sequence[Middleware] | None = None,
    max_per_ip: int | None = 100,
    max_sessions: int | None = 10_000,
    metrics: MetricsRef | None = None,
    logger: EventLogger | None = None,
) -> list[Middleware]:
    """Recover, RequestID, AccessLog (coloured), LogContext, [Metrics], RateLimit, auth,
    MaxSessions."""
    return _build(
        [AccessLog(DEV_LOG_FORMAT, logger=logger), LogContext()],
        auth=auth,
        max_per_ip=max_per_ip,
        max_sessions=max_sessions,
        metrics=metrics,
    )


def prod(
    *,
    auth: Middleware | Sequence[Middleware] | None = None,
    max_per_ip: int | None = 100,
    max_sessions: int | None = 10_000,
    metrics: MetricsRef | None = None,
    logger: EventLogger | None = None,
) -> list[Middleware]:
    """Recover, RequestID, AccessLog (Combined), Logger, [Metrics], RateLimit, auth,
    MaxSessions, Compress."""
    return _build(
        [AccessLog(COMBINED_LOG_FORMAT, logger=logger), Logger(logger)],
        auth=auth,
        max_per_ip=max_per_ip,
        max_sessions=max_sessions,
        metrics=metrics,
        inner=[Compress(("gzip", "deflate"))],
    )
