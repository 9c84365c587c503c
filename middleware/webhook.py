"""Webhook: session events POSTed as JSON to an external URL, never in a session's way.

A session only ever does a ``put_nowait`` on a bounded queue. One background task (per
`Webhook`, started on first use) takes events in order and POSTs each with a small
asyncio HTTP/1.1 client (``asyncio.open_connection``; ``https://`` through the default
TLS context), with a timeout per attempt and retries with exponential backoff and
jitter. A full queue drops the new event and counts it; a slow or dead endpoint only
makes the queue fill. Delivery counts are in `Webhook.stats`, and in a
`MetricsCollector` when one is given (``aiowt_webhook_events_total{outcome}``).

The counters on the `Webhook` are touched only on its event loop, by plain statements
with no await between read and write: the queue is the one channel between sessions
and the sender, which owns everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import random
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import pykka
import structlog

from aiowt.actors import MetricsCollector, ServiceHandle, Services, tell_quietly
from aiowt.actors.metric_names import WEBHOOK_EVENTS
from aiowt.actors.metrics import Inc
from aiowt.transport import SessionContext, UsageError

from ._options import check_int, check_seconds
from ._plumbing import observe, when_accepted
from .chain import CallNext
from .record import SessionRecord

__all__ = ["EVENTS", "Webhook", "WebhookEvent", "WebhookStats"]

log = structlog.get_logger("aiowt.webhook")

EVENTS: Final = frozenset({"connect", "disconnect", "rejected"})
"""The events there are: a session accepted, a session ended, a CONNECT refused."""


_RETRYABLE_4XX = frozenset({408, 425, 429})
_CRLF = frozenset("\r\n")


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event, as POSTed (the JSON object has exactly these fields; seed 000's first)."""

    event: str
    """``"connect"``, ``"disconnect"`` or ``"rejected"``."""
    session_id: str
    remote_addr: str
    path: str
    timestamp: float
    """Unix time of the event, in seconds."""
    request_id: str
    route: str
    status: int | None = None
    """The CONNECT status (disconnect and rejected)."""
    reason: str | None = None
    """The refusal's reason (rejected)."""
    duration: float | None = None
    """Seconds from acceptance to the end (disconnect)."""
    bytes_in: int | None = None
    bytes_out: int | None = None
    close_code: int | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class WebhookStats:
    """Delivery counts since the webhook started."""

    sent: int
    """Events the endpoint accepted (2xx)."""
    failed: int
    """Events given up on after the last retry (or at once, for a plain 4xx)."""
    dropped: int
    """Events not queued because the queue was full (the overflow)."""
    retries: int
    """Attempts repeated after a failure."""
    queued: int
    """Events waiting now."""


class _BadResponse(Exception):
    pass


class Webhook:
    """POST session events to `url` as JSON (seed 000's ``Webhook``), off the session path.

    `events` chooses which of `EVENTS` are sent. `queue_size` bounds the events waiting;
    each POST attempt has `timeout` seconds; a failed one (connection error, timeout,
    5xx, 408/425/429) is retried up to `retries` times, after `backoff` seconds doubling
    up to `max_backoff`, with jitter. `headers` are added to every POST (an
    ``authorization``, say). `tls` replaces the default TLS context of an ``https://``
    URL (a private CA, a client certificate). Call `aclose()` at shutdown to deliver
    what is queued (within a timeout) and stop the sender.
    """

    def __init__(
        self,
        url: str,
        *,
        events: Iterable[str] = EVENTS,
        queue_size: int = 1000,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        headers: Sequence[tuple[str, str]] = (),
        metrics: pykka.ActorRef[MetricsCollector] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"url must be an http:// or https:// URL with a host, got {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"bad port in {url!r}") from None
        chosen = frozenset(events)
        if not chosen or not chosen <= EVENTS:
            raise UsageError(f"events must be some of {sorted(EVENTS)}, got {sorted(chosen)}")
        check_int("queue_size", queue_size, 1)
        check_int("retries", retries, 0)
        check_seconds("backoff", backoff, allow_zero=True)
        check_seconds("max_backoff", max_backoff, allow_zero=True)
        check_seconds("timeout", timeout, allow_zero=False)
        for name, value in headers:
            if not (isinstance(name, str) and isinstance(value, str)) or _CRLF & set(name + value):
                raise UsageError(f"bad header {name!r}: {value!r}")
        self.metrics: ServiceHandle[MetricsCollector] = ServiceHandle(
            metrics, MetricsCollector.start, "metrics"
        )
        if tls is not None and (parts.scheme != "https" or not isinstance(tls, ssl.SSLContext)):
            raise UsageError("tls is an ssl.SSLContext, for an https:// url only")
        self.url = url
        self.events = chosen
        self.queue_size = queue_size
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        if parts.scheme == "https" and tls is None:
            # Made once: loading the CA store is file I/O, not for every POST on the loop.
            tls = ssl.create_default_context()
        self._ssl = tls
        self._host = parts.hostname
        self._port = port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            host_header += f":{parts.port}"
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        self._head = (
            f"POST {self._target} HTTP/1.1\r\nHost: {host_header}\r\n"
            "Content-Type: application/json\r\nUser-Agent: aiowt-webhook\r\n"
            f"Connection: close\r\n{extra}"
        )
        self._queue: asyncio.Queue[WebhookEvent] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._sent = self._failed = self._dropped = self._retries = 0

    def __repr__(self) -> str:
        shown = urlsplit(self.url)._replace(query="", fragment="").geturl()
        return (
            f"Webhook({shown!r}, events={sorted(self.events)}, queue_size={self.queue_size}, "
            f"retries={self.retries}, timeout={self.timeout:g})"
        )

    @property
    def stats(self) -> WebhookStats:
        return WebhookStats(
            self._sent, self._failed, self._dropped, self._retries, self._queue.qsize()
        )

    # --- the middleware --------------------------------------------------------------------------
    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        if "connect" in self.events:
            when_accepted(ctx, lambda _: self._emit(self._event("connect", ctx)))
        async with observe(ctx, self._ended):
            await call_next(ctx)

    def _ended(self, ctx: SessionContext, record: SessionRecord, _: BaseException | None) -> None:
        if record.accepted:
            if "disconnect" in self.events:
                self._emit(self._event("disconnect", ctx, record))
        elif "rejected" in self.events:
            self._emit(self._event("rejected", ctx, record))

    @staticmethod
    def _event(kind: str, ctx: SessionContext, record: SessionRecord | None = None) -> WebhookEvent:
        ids = ctx.ids
        extra: dict[str, Any] = {}
        if record is not None:
            extra["status"] = record.status
            if kind == "rejected":
                extra["reason"] = record.reason
            else:
                extra["duration"] = None if record.duration is None else round(record.duration, 6)
                extra["bytes_in"] = record.bytes_in
                extra["bytes_out"] = record.bytes_out
                extra["close_code"] = record.close_code
        return WebhookEvent(
            event=kind,
            session_id=ids["session_id"],
            remote_addr=ids["remote_addr"],
            path=ids["path"],
            timestamp=round(time.time(), 3),
            request_id=ids["request_id"],
            route=ctx.route_pattern,
            **extra,
        )

    # --- the queue -------------------------------------------------------------------------------
    def _emit(self, event: WebhookEvent) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped += 1
            self._count("dropped")
            log.debug("webhook queue full; event dropped", dropped=self._dropped)
            return
        if self._task is None or self._task.done():
            # An empty context: the sender must not carry the ids of the session that
            # happened to start it into every line it logs.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="aiowt-webhook", context=contextvars.Context()
            )

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._deliver(event)
            finally:
                self._queue.task_done()

    async def _deliver(self, event: WebhookEvent) -> None:
        body = event.to_json()
        delay = self.backoff
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._retries += 1
                # Full jitter keeps many servers from retrying in step.
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.max_backoff)
            try:
                async with asyncio.timeout(self.timeout):
                    status = await self._post(body)
            except (OSError, TimeoutError, _BadResponse, asyncio.IncompleteReadError) as exc:
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                continue
            if 200 <= status < 300:
                self._sent += 1
                self._count("sent")
                return
            problem = f"HTTP {status}"
            if 400 <= status < 500 and status not in _RETRYABLE_4XX:
                break  # the endpoint will not change its mind about this event
        self._failed += 1
        self._count("failed")
        log.warning(
            "webhook delivery failed",
            kind=event.event,
            session_id=event.session_id,
            problem=problem,
            url=self._target,
        )

    async def _post(self, body: bytes) -> int:
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        try:
            writer.write(f"{self._head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            line = await reader.readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise _BadResponse(f"not an HTTP response: {line[:80]!r}")
            return int(parts[1])
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def use_services(self, services: Services, name: str) -> None:
        self.metrics.bind(services.metrics)

    def _count(self, outcome: str) -> None:
        tell_quietly(self.metrics.started, Inc(WEBHOOK_EVENTS.name, labels={"outcome": outcome}))

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop taking events, deliver what is queued (for up to `timeout` s), then stop."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._queue.join()
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
