"""Session metrics into the `MetricsCollector` actor, and their Prometheus exposition.

`Metrics` reports every session that passes through it to a `MetricsCollector` (the
single owner of the numbers; see `aiowt.actors.metrics`), by ``tell``, so a session never
waits for it. `PrometheusMetrics` is a `Metrics` that also serves the collector's
content in the Prometheus text format (or OpenMetrics, if the scraper asks for it),
rendered by ``prometheus_client`` from a snapshot taken when scraped: on a port it
opens (`serve`), or mounted into a web app as ASGI (`asgi`), or as bytes (`render`).

What `Metrics` records (``route`` is the route *pattern*, never the raw path, so the
label sets stay few; ``direction`` is ``in`` or ``out``):

=======================================================  =========  ==========================
name                                                     kind       labels
=======================================================  =========  ==========================
``aiowt_sessions_in_progress``                           gauge      route
``aiowt_sessions_total`` (accepted)                      counter    route
``aiowt_handshakes_total`` (every verdict)               counter    route, status
``aiowt_handshake_rejections_total``                     counter    route, middleware, status
``aiowt_handshake_duration_seconds`` (CONNECT→verdict)   histogram  route
``aiowt_session_duration_seconds`` (accept→end)          histogram  route
``aiowt_session_errors_total`` (handler/chain failures)  counter    route
``aiowt_datagrams_total`` / ``aiowt_datagram_bytes_total``  counter route, direction
``aiowt_stream_frames_total`` / ``aiowt_stream_bytes_total`` counter route, direction
``aiowt_streams_opened_total`` (by the peer)             counter    route
=======================================================  =========  ==========================

"Stream frames" are stream data chunks as the transport receives or sends them (one
per QUIC delivery, one per write), counted by a tap. Traffic is added up per session
and reported when it ends. The names differ from those of `ConcurrencyStats` and
`Bandwidth` (``aiowt_sessions_active``, ...), so both can share one collector without
counting anything twice. A rejection is seen only if it comes from further in: put
`Metrics` early in the chain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import pykka

from aiowt.actors._service import ServiceHandle, ask, tell_quietly
from aiowt.actors.breaker import BreakerState, BreakerStatus, GetBreakerStatus
from aiowt.actors.metrics import (
    AddGauge,
    HistogramValue,
    Inc,
    MetricsCollector,
    MetricsSnapshot,
    Observe,
    TakeSnapshot,
)
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import UsageError
from aiowt.transport.events import (
    DatagramReceived,
    DatagramSent,
    SessionEvent,
    StreamDataReceived,
    StreamDataSent,
    StreamOpened,
)
from aiowt.transport.session import Session, SessionTap

from ._http import HttpRequest, HttpResponse, RouteHandler, ServesPages
from .chain import CallNext
from .timing import observe, when_accepted

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from aiowt.actors.breaker import CircuitBreaker as BreakerActor

__all__ = [
    "DATAGRAMS_METRIC",
    "DATAGRAM_BYTES_METRIC",
    "HANDSHAKES_METRIC",
    "HANDSHAKE_BUCKETS",
    "HANDSHAKE_SECONDS_METRIC",
    "IN_PROGRESS_METRIC",
    "REJECTIONS_METRIC",
    "SESSIONS_METRIC",
    "SESSION_BUCKETS",
    "SESSION_ERRORS_METRIC",
    "SESSION_SECONDS_METRIC",
    "STREAMS_OPENED_METRIC",
    "STREAM_BYTES_METRIC",
    "STREAM_FRAMES_METRIC",
    "Metrics",
    "PrometheusMetrics",
    "TrafficTap",
]

MetricsRef = pykka.ActorRef[MetricsCollector]

IN_PROGRESS_METRIC: Final = "aiowt_sessions_in_progress"
SESSIONS_METRIC: Final = "aiowt_sessions_total"
HANDSHAKES_METRIC: Final = "aiowt_handshakes_total"
REJECTIONS_METRIC: Final = "aiowt_handshake_rejections_total"
HANDSHAKE_SECONDS_METRIC: Final = "aiowt_handshake_duration_seconds"
SESSION_SECONDS_METRIC: Final = "aiowt_session_duration_seconds"
SESSION_ERRORS_METRIC: Final = "aiowt_session_errors_total"
DATAGRAMS_METRIC: Final = "aiowt_datagrams_total"
DATAGRAM_BYTES_METRIC: Final = "aiowt_datagram_bytes_total"
STREAM_FRAMES_METRIC: Final = "aiowt_stream_frames_total"
STREAM_BYTES_METRIC: Final = "aiowt_stream_bytes_total"
STREAMS_OPENED_METRIC: Final = "aiowt_streams_opened_total"

HANDSHAKE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: a handshake is milliseconds, unless a middleware waits on something slow."""

SESSION_BUCKETS: Final = (
    0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
)  # fmt: skip
"""Seconds: sessions live from a moment to a day."""

_HELP: Final = {
    IN_PROGRESS_METRIC: "Sessions accepted and not ended, by route.",
    SESSIONS_METRIC: "Sessions accepted, by route.",
    HANDSHAKES_METRIC: "CONNECT requests answered, by route and status.",
    REJECTIONS_METRIC: "CONNECT requests refused, by route, refusing middleware and status.",
    HANDSHAKE_SECONDS_METRIC: "Seconds from the CONNECT request to its verdict.",
    SESSION_SECONDS_METRIC: "Seconds from acceptance to the end of the session.",
    SESSION_ERRORS_METRIC: "Sessions ended by an exception in the handler or the chain.",
    DATAGRAMS_METRIC: "Datagrams, by route and direction.",
    DATAGRAM_BYTES_METRIC: "Datagram payload bytes, by route and direction.",
    STREAM_FRAMES_METRIC: "Stream data frames as the transport delivered or sent them.",
    STREAM_BYTES_METRIC: "Stream payload bytes, by route and direction.",
    STREAMS_OPENED_METRIC: "Streams the peer opened (and the server took), by route.",
}


def _metrics_handle(metrics: object) -> ServiceHandle[MetricsCollector]:
    if metrics is not None and not isinstance(metrics, pykka.ActorRef):
        raise UsageError("metrics must be a MetricsCollector ActorRef or None")
    return ServiceHandle(metrics, MetricsCollector.start, "metrics")


class TrafficTap(SessionTap):
    """Counts one session's datagrams, stream frames, bytes and streams, both ways.

    Plain integers bumped on the transport's hot path; read when the session has ended.
    """

    __slots__ = (
        "datagram_bytes_in",
        "datagram_bytes_out",
        "datagrams_in",
        "datagrams_out",
        "stream_bytes_in",
        "stream_bytes_out",
        "stream_frames_in",
        "stream_frames_out",
        "streams_opened",
    )

    def __init__(self) -> None:
        self.datagrams_in = self.datagrams_out = 0
        self.datagram_bytes_in = self.datagram_bytes_out = 0
        self.stream_frames_in = self.stream_frames_out = 0
        self.stream_bytes_in = self.stream_bytes_out = 0
        self.streams_opened = 0

    def __repr__(self) -> str:
        return (
            f"<TrafficTap datagrams={self.datagrams_in}/{self.datagrams_out} "
            f"stream_bytes={self.stream_bytes_in}/{self.stream_bytes_out}>"
        )

    def observe(self, session: Session, event: SessionEvent) -> bool:
        if isinstance(event, DatagramReceived):
            self.datagrams_in += 1
            self.datagram_bytes_in += len(event.data)
        elif isinstance(event, StreamDataReceived):
            if event.data:
                self.stream_frames_in += 1
                self.stream_bytes_in += len(event.data)
        elif isinstance(event, DatagramSent):
            self.datagrams_out += 1
            self.datagram_bytes_out += len(event.data)
        elif isinstance(event, StreamDataSent):
            if event.data:
                self.stream_frames_out += 1
                self.stream_bytes_out += len(event.data)
        elif isinstance(event, StreamOpened):
            self.streams_opened += 1
        return True


class Metrics:
    """Report sessions to a `MetricsCollector`: counts, handshakes, rejections, traffic, times.

    `metrics` is the collector's ref; without one, a collector is started on first use
    (read it through `service`; `aclose()` stops it). See the module docstring for the
    metrics. Every report is a ``tell``: nothing here waits for the collector.
    """

    def __init__(self, metrics: MetricsRef | None = None) -> None:
        self.service = _metrics_handle(metrics)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(metrics={self.service!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ref = self.service.ref()
        route = {"route": ctx.route_pattern}
        traffic = TrafficTap()
        ctx.taps.append(traffic)

        def accepted(_: Session) -> None:
            _tell(ref, AddGauge(IN_PROGRESS_METRIC, 1, route))
            _tell(ref, Inc(SESSIONS_METRIC, 1, route))

        when_accepted(ctx, accepted)
        record, error = await observe(ctx, call_next)
        status = str(record.status)
        _tell(ref, Inc(HANDSHAKES_METRIC, 1, {**route, "status": status}))
        _tell(
            ref,
            Observe(
                HANDSHAKE_SECONDS_METRIC, record.handshake_seconds, route, buckets=HANDSHAKE_BUCKETS
            ),
        )
        if record.rejected and record.rejected_by is not None:
            labels = {**route, "middleware": record.rejected_by, "status": status}
            _tell(ref, Inc(REJECTIONS_METRIC, 1, labels))
        if record.duration is not None:
            _tell(ref, AddGauge(IN_PROGRESS_METRIC, -1, route))
            _tell(
                ref,
                Observe(SESSION_SECONDS_METRIC, record.duration, route, buckets=SESSION_BUCKETS),
            )
            _report_traffic(ref, route, traffic)
        if record.failed:
            _tell(ref, Inc(SESSION_ERRORS_METRIC, 1, route))
        if error is not None:
            raise error

    async def snapshot(self) -> MetricsSnapshot:
        """The collector's content now (asks it; starts it if this middleware owns it)."""
        return await ask(self.service.ref(), TakeSnapshot())

    async def aclose(self) -> None:
        """Stop the collector if this middleware started it."""
        await self.service.stop()


def _tell(ref: MetricsRef, message: Inc | AddGauge | Observe) -> None:
    # The help text rides on every message (the collector keeps the first), so the
    # family is documented whichever message creates it.
    tell_quietly(ref, _with_help(message))


def _with_help(message: Inc | AddGauge | Observe) -> Inc | AddGauge | Observe:
    return dataclasses.replace(message, help=_HELP.get(message.name, ""))


def _report_traffic(ref: MetricsRef, route: dict[str, str], tap: TrafficTap) -> None:
    for name, value_in, value_out in (
        (DATAGRAMS_METRIC, tap.datagrams_in, tap.datagrams_out),
        (DATAGRAM_BYTES_METRIC, tap.datagram_bytes_in, tap.datagram_bytes_out),
        (STREAM_FRAMES_METRIC, tap.stream_frames_in, tap.stream_frames_out),
        (STREAM_BYTES_METRIC, tap.stream_bytes_in, tap.stream_bytes_out),
    ):
        if value_in:
            _tell(ref, Inc(name, value_in, {**route, "direction": "in"}))
        if value_out:
            _tell(ref, Inc(name, value_out, {**route, "direction": "out"}))
    if tap.streams_opened:
        _tell(ref, Inc(STREAMS_OPENED_METRIC, tap.streams_opened, route))


# --- Prometheus exposition ---------------------------------------------------------------------

BREAKER_STATE_METRIC: Final = "aiowt_circuit_breaker_state"
OVERFLOW_METRIC: Final = "aiowt_metric_series_overflowed"


class _SnapshotCollector:
    """A ``prometheus_client`` collector over one `MetricsSnapshot` (and a breaker status)."""

    def __init__(self, snapshot: MetricsSnapshot, breaker: BreakerStatus | None) -> None:
        self._snapshot = snapshot
        self._breaker = breaker

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.metrics_core import Metric

        overflowed: list[tuple[str, int]] = []
        for family in self._snapshot.families.values():
            name = family.name
            help_text = family.help or name
            if family.overflowed:
                overflowed.append((name, family.overflowed))
            if family.kind == "counter":
                base = name.removesuffix("_total")
                metric = Metric(base, help_text, "counter")
                for labels, value in family.series.items():
                    assert not isinstance(value, HistogramValue)
                    metric.add_sample(f"{base}_total", dict(labels), value)
            elif family.kind == "gauge":
                metric = Metric(name, help_text, "gauge")
                for labels, value in family.series.items():
                    assert not isinstance(value, HistogramValue)
                    metric.add_sample(name, dict(labels), value)
            else:
                metric = Metric(name, help_text, "histogram")
                for labels, value in family.series.items():
                    assert isinstance(value, HistogramValue)
                    base_labels = dict(labels)
                    for bound, count in value.buckets:
                        le = "+Inf" if math.isinf(bound) else repr(float(bound))
                        metric.add_sample(f"{name}_bucket", {**base_labels, "le": le}, count)
                    metric.add_sample(f"{name}_count", base_labels, value.count)
                    metric.add_sample(f"{name}_sum", base_labels, value.sum)
            yield metric
        if overflowed:
            metric = Metric(
                OVERFLOW_METRIC,
                "Samples folded into a metric's overflow series (its label-set cap was reached).",
                "counter",
            )
            for name, count in overflowed:
                metric.add_sample(f"{OVERFLOW_METRIC}_total", {"metric": name}, count)
            yield metric
        if self._breaker is not None:
            state = Metric(
                BREAKER_STATE_METRIC, "The circuit breaker's state (1: current).", "gauge"
            )
            for candidate in BreakerState:
                current = 1.0 if candidate is self._breaker.state else 0.0
                state.add_sample(BREAKER_STATE_METRIC, {"state": candidate.value}, current)
            yield state
            failures = Metric(
                "aiowt_circuit_breaker_failures", "Failures inside the breaker's window.", "gauge"
            )
            failures.add_sample("aiowt_circuit_breaker_failures", {}, self._breaker.failures)
            yield failures


class PrometheusMetrics(Metrics, ServesPages):
    """A `Metrics` middleware that also serves the collector in the Prometheus format.

    Seed 000's ``PrometheusMetrics``: ``server.use(prom)`` records, and the scrape
    endpoint shows everything in the collector (what `Metrics` records, and whatever
    else reports to the same collector: limits, the breaker, handlers). Ways to serve:

    - ``await prom.serve(port=9090)``: an HTTP endpoint on its own port (`path`,
      default ``/metrics``); ``await prom.aclose()`` stops it;
    - ``prom.asgi``: an ASGI app to mount in an existing web application;
    - ``await prom.render(accept)``: the bytes and content type, for anything else.

    Each scrape asks the collector for a snapshot (within `scrape_timeout` seconds,
    else the scrape fails with 503) and renders it with ``prometheus_client``
    (``generate_latest``, or OpenMetrics when the ``Accept`` header asks for it). With
    `breaker` (a `CircuitBreaker` actor ref), its state is asked for too, and shown as
    ``aiowt_circuit_breaker_state{state=...}`` (1 for the current state) and
    ``aiowt_circuit_breaker_failures``. With `process`, the standard ``process_*``
    metrics of ``prometheus_client`` are included.
    """

    def __init__(
        self,
        metrics: MetricsRef | None = None,
        *,
        path: str = "/metrics",
        breaker: pykka.ActorRef[BreakerActor] | None = None,
        process: bool = True,
        scrape_timeout: float = 5.0,
    ) -> None:
        try:
            from prometheus_client import ProcessCollector
        except ImportError:  # pragma: no cover - the extra is installed for the tests
            raise UsageError(
                "PrometheusMetrics needs prometheus_client: pip install 'aiowt[prometheus]'"
            ) from None
        super().__init__(metrics)
        if not isinstance(path, str) or not path.startswith("/"):
            raise UsageError(f"path must start with '/', got {path!r}")
        if breaker is not None and not isinstance(breaker, pykka.ActorRef):
            raise UsageError("breaker must be a CircuitBreaker ActorRef or None")
        if not isinstance(scrape_timeout, int | float) or scrape_timeout <= 0:
            raise UsageError(f"scrape_timeout must be a positive number, got {scrape_timeout!r}")
        self.path = path
        self.breaker = breaker
        self.scrape_timeout = float(scrape_timeout)
        # Registered in no registry of its own: it joins each scrape's registry.
        self._process = ProcessCollector(registry=None) if process else None

    def __repr__(self) -> str:
        url = self.serving_url
        serving = f", serving={url}" if url is not None else ""
        return f"PrometheusMetrics(path={self.path!r}, metrics={self.service!r}{serving})"

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (bytes, content type) of the collector now, as `accept` prefers."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        async with asyncio.timeout(self.scrape_timeout):
            snapshot = await ask(self.service.ref(), TakeSnapshot())
            breaker = await ask(self.breaker, GetBreakerStatus()) if self.breaker else None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(snapshot, breaker))
        if self._process is not None:
            registry.register(self._process)
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    async def _scrape(self, request: HttpRequest) -> HttpResponse:
        try:
            body, content_type = await self.render(request.headers.get("accept", ""))
        except (TimeoutError, pykka.ActorDeadError):
            return HttpResponse(503, b"metrics collector unavailable\n")
        return HttpResponse(200, body, content_type)

    @property
    def routes(self) -> dict[str, RouteHandler]:
        """``{path: handler}``, to combine with other endpoints in one `HttpEndpoint`."""
        return {self.path: self._scrape}

    async def aclose(self) -> None:
        """Stop serving, and stop the collector if this middleware started it."""
        await self._stop_serving()
        await super().aclose()
