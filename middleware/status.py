"""Status: seed 003's status service for sessions, as JSON over plain HTTP, and a health check.

`Status` is an observer (like `Metrics`, it reports each session to a
`MetricsCollector`, the one owner of shared counters) that serves what the collector
knows as seed 003's document, ``GET /.status``::

    {"pid": 21732, "uptime": "1m15.926272s", "uptime_sec": 75.926272,
     "time": "2026-03-04T08:00:27.152986+00:00", "time_unix": 1772611227,
     "status_code_count": {"200": 53, "429": 11}, "total_count": 64,
     "total_response_time": "16.777ms", "total_response_time_sec": 0.016777,
     "average_response_time": "262.14µs", "average_response_time_sec": 0.00026214,
     "active_sessions": 3, "cluster_sessions": 5}

For a WebTransport session the *response* is the CONNECT response: "response time" is
the time from the CONNECT to its verdict (accepted or refused), not the session's life,
which can be hours (`Metrics` has the session-duration histogram). Uptime counts from
the creation of the `Status`.

``active_sessions`` are this process's. In a server, ``cluster_sessions`` counts the
sessions its session registry lists (those admitted through `MaxSessions`, which every
ready-made stack has) across every process of the server's backend: on the Redis
backend, the cluster's; in process, this process's.

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
from typing import Any

import pykka
import structlog

from aiowt.actors import MetricsCollector, Services, ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import HistogramValue, TakeSnapshot
from aiowt.actors.sessions import CountSessions
from aiowt.transport import UsageError

from ._http import HttpRequest, HttpResponse, RouteHandler, ServesPages
from .access_format import format_duration
from .metrics import Observer

__all__ = ["HealthCheck", "Status"]

log = structlog.get_logger("aiowt.status")

HealthCheck = Callable[[], bool | Awaitable[bool]]
"""A named health check: returns (or resolves to) True when healthy; raising is failing."""


class Status(Observer, ServesPages):
    """Report sessions (as `Metrics` does); serve verdicts and times as JSON (seed 003).

    `metrics` is the `MetricsCollector` to report to and read (see `Observer`).
    `path` and `health_path` are where `serve` and `asgi` answer. `checks` are extra
    named health checks, each given `timeout` seconds. Verdicts given further out in
    the chain than this middleware are not seen: put it early.
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
        super().__init__(metrics)
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
        self.path = path
        self.health_path = health_path
        self.checks = named
        self.timeout = float(timeout)
        self._clock = clock
        self._started = clock()
        self._sessions: pykka.ActorRef[Any] | None = None

    def use_services(self, services: Services, name: str) -> None:
        super().use_services(services, name)
        self._sessions = services.sessions

    def __repr__(self) -> str:
        url = self.serving_url
        serving = f", serving={url}" if url is not None else ""
        return f"Status(path={self.path!r}, health_path={self.health_path!r}{serving})"

    # --- reading ---------------------------------------------------------------------------------
    async def read(self) -> dict[str, Any]:
        """The status document (asks the collector)."""
        async with asyncio.timeout(self.timeout):
            snapshot = await ask(self.service.ref(), TakeSnapshot())
        counts: dict[str, int] = {}
        family = snapshot.families.get(names.HANDSHAKES.name)
        for labels, value in sorted(family.series.items()) if family is not None else ():
            assert isinstance(value, int | float)
            status = dict(labels).get("status", "other")
            counts[status] = counts.get(status, 0) + int(value)
        counts = dict(sorted(counts.items()))
        total = sum(counts.values())
        seconds = 0.0
        timed = snapshot.families.get(names.HANDSHAKE_SECONDS.name)
        for histogram in timed.series.values() if timed is not None else ():
            assert isinstance(histogram, HistogramValue)
            seconds += histogram.sum
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
            "active_sessions": int(snapshot.total(names.SESSIONS_ACTIVE.name)),
            **await self._cluster(),
        }

    async def _cluster(self) -> dict[str, int]:
        if self._sessions is None:
            return {}
        try:
            async with asyncio.timeout(self.timeout):
                return {"cluster_sessions": await ask(self._sessions, CountSessions())}
        except (TimeoutError, pykka.ActorDeadError):
            return {}

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
        await super().aclose()
