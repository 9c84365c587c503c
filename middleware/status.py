"""Status: seed 003's status service for sessions, as JSON over plain HTTP, and a health check.

`Status` is a middleware that counts each verdict by status code and adds up the
response times, in a `MetricsCollector` (the one owner of shared counters), and serves
``GET /.status``::

    {"pid": 21732, "uptime": "1m15.926272s", "uptime_sec": 75.926272,
     "time": "2026-03-04T08:00:27.152986+00:00", "time_unix": 1772611227,
     "status_code_count": {"200": 53, "429": 11}, "total_count": 64,
     "total_response_time": "16.777ms", "total_response_time_sec": 0.016777,
     "average_response_time": "262.14µs", "average_response_time_sec": 0.00026214,
     "active_sessions": 3}

For a WebTransport session the *response* is the CONNECT response: "response time" is
the time from the CONNECT to its verdict (accepted or refused), not the session's life,
which can be hours (`Metrics` has the session-duration histogram). Uptime counts from
the creation of the `Status`.

``GET /healthz`` answers 200 ``{"status": "ok", ...}`` when the collector answers
within `timeout` and every named check passes, else 503 with the failing ones.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import pykka
import structlog

from aiowt.actors._service import ServiceHandle, ask, tell_quietly
from aiowt.actors.metrics import AddGauge, Inc, MetricsCollector, TakeSnapshot
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import UsageError
from aiowt.transport.session import Session

from ._http import HttpRequest, HttpResponse, RouteHandler, ServesPages
from .chain import CallNext
from .logging import format_duration
from .timing import observe, when_accepted

__all__ = [
    "STATUS_ACTIVE_METRIC",
    "STATUS_RESPONSES_METRIC",
    "STATUS_RESPONSE_SECONDS_METRIC",
    "HealthCheck",
    "Status",
]

log = structlog.get_logger("aiowt.status")

STATUS_RESPONSES_METRIC: Final = "aiowt_status_responses_total"
STATUS_RESPONSE_SECONDS_METRIC: Final = "aiowt_status_response_seconds_total"
STATUS_ACTIVE_METRIC: Final = "aiowt_status_sessions_active"

HealthCheck = Callable[[], bool | Awaitable[bool]]
"""A named health check: returns (or resolves to) True when healthy; raising is failing."""


class Status(ServesPages):
    """Count verdicts by status and their response times; serve them as JSON (seed 003).

    `metrics` is the `MetricsCollector` to count in (default: one started on first
    use; `aclose()` stops it). `path` and `health_path` are where `serve` and `asgi`
    answer. `checks` are extra named health checks, each given `timeout` seconds.
    Verdicts given further out in the chain than this middleware are not seen: put it
    early.
    """

    def __init__(
        self,
        metrics: pykka.ActorRef[MetricsCollector] | None = None,
        *,
        path: str = "/.status",
        health_path: str = "/healthz",
        checks: Mapping[str, HealthCheck] | None = None,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if metrics is not None and not isinstance(metrics, pykka.ActorRef):
            raise UsageError("metrics must be a MetricsCollector ActorRef or None")
        for name, value in (("path", path), ("health_path", health_path)):
            if not isinstance(value, str) or not value.startswith("/"):
                raise UsageError(f"{name} must start with '/', got {value!r}")
        if path == health_path:
            raise UsageError("path and health_path must differ")
        named = dict(checks or {})
        for name, check in named.items():
            if not isinstance(name, str) or not callable(check):
                raise UsageError(f"checks maps names to callables, got {name!r}: {check!r}")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise UsageError(f"timeout must be a positive number, got {timeout!r}")
        if not callable(clock):
            raise UsageError("clock must be a callable returning seconds")
        self.service = ServiceHandle(metrics, MetricsCollector.start, "metrics")
        self.path = path
        self.health_path = health_path
        self.checks = named
        self.timeout = float(timeout)
        self._clock = clock
        self._started = clock()

    def __repr__(self) -> str:
        url = self.serving_url
        serving = f", serving={url}" if url is not None else ""
        return f"Status(path={self.path!r}, health_path={self.health_path!r}{serving})"

    # --- the middleware --------------------------------------------------------------------------
    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ref = self.service.ref()

        def accepted(_: Session) -> None:
            tell_quietly(ref, AddGauge(STATUS_ACTIVE_METRIC, 1, help="Sessions open now."))

        when_accepted(ctx, accepted)
        record, error = await observe(ctx, call_next)
        if record.accepted:
            tell_quietly(ref, AddGauge(STATUS_ACTIVE_METRIC, -1))
        tell_quietly(
            ref,
            Inc(
                STATUS_RESPONSES_METRIC,
                labels={"status": str(record.status)},
                help="CONNECT verdicts by status code.",
            ),
        )
        tell_quietly(
            ref,
            Inc(
                STATUS_RESPONSE_SECONDS_METRIC,
                record.handshake_seconds,
                help="Seconds from CONNECT to verdict, summed.",
            ),
        )
        if error is not None:
            raise error

    # --- reading ---------------------------------------------------------------------------------
    async def read(self) -> dict[str, Any]:
        """The status document (asks the collector)."""
        async with asyncio.timeout(self.timeout):
            snapshot = await ask(self.service.ref(), TakeSnapshot())
        counts: dict[str, int] = {}
        family = snapshot.families.get(STATUS_RESPONSES_METRIC)
        if family is not None:
            for labels, value in sorted(family.series.items()):
                assert isinstance(value, int | float)
                counts[dict(labels).get("status", "other")] = int(value)
        total = sum(counts.values())
        seconds = snapshot.value(STATUS_RESPONSE_SECONDS_METRIC)
        average = seconds / total if total else 0.0
        uptime = self._clock() - self._started
        now = datetime.now(UTC)
        return {
            "pid": os.getpid(),
            "uptime": format_duration(uptime),
            "uptime_sec": round(uptime, 6),
            "time": now.isoformat(),
            "time_unix": int(now.timestamp()),
            "status_code_count": counts,
            "total_count": total,
            "total_response_time": format_duration(seconds),
            "total_response_time_sec": round(seconds, 9),
            "average_response_time": format_duration(average),
            "average_response_time_sec": round(average, 9),
            "active_sessions": int(snapshot.value(STATUS_ACTIVE_METRIC)),
        }

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether all is well, and the document saying what was checked."""
        results: dict[str, str] = {}
        try:
            async with asyncio.timeout(self.timeout):
                await ask(self.service.ref(), TakeSnapshot())
            results["metrics"] = "ok"
        except (TimeoutError, pykka.ActorDeadError):
            results["metrics"] = "failing"
        for name, check in self.checks.items():
            results[name] = "ok" if await self._passes(name, check) else "failing"
        healthy = all(result == "ok" for result in results.values())
        return healthy, {"status": "ok" if healthy else "failing", "checks": results}

    async def _passes(self, name: str, check: HealthCheck) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                result = check()
                if inspect.isawaitable(result):
                    result = await result
            return result is True
        except Exception:
            log.warning("health check failed", check=name, exc_info=True)
            return False

    # --- serving ---------------------------------------------------------------------------------
    async def _status_page(self, request: HttpRequest) -> HttpResponse:
        try:
            return HttpResponse.json(await self.read())
        except (TimeoutError, pykka.ActorDeadError):
            return HttpResponse.json({"error": "metrics collector unavailable"}, 503)

    async def _health_page(self, request: HttpRequest) -> HttpResponse:
        healthy, document = await self.health()
        return HttpResponse.json(document, 200 if healthy else 503)

    @property
    def routes(self) -> dict[str, RouteHandler]:
        """``{path: handler, health_path: handler}``, to combine with other endpoints."""
        return {self.path: self._status_page, self.health_path: self._health_page}

    async def aclose(self) -> None:
        """Stop serving, and stop the collector if this middleware started it."""
        await self._stop_serving()
        await self.service.stop()
