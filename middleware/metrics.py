"""Session metrics in the `MetricsCollector` actor, and their Prometheus exposition.

`Metrics` reports every session that passes through it to a `MetricsCollector` (the
single owner of the numbers; see `aiowt.actors.metrics`), by ``tell``, so a session
never waits for it. What it reports is the session part of the catalogue in
`aiowt.actors.metric_names` (verdicts by status, refusals by middleware, handshake and
session durations, sessions accepted and active, traffic counted at the transport),
with ``route`` (the route *pattern*) as a label.

The other observers (`Status`, `ConcurrencyStats`, `Bandwidth`) report the same facts
through the same function, `report_session`, and read them back: whichever of them
share a collector, a session is reported to it once, by the outermost. Put the first
of them early in the chain: a refusal is seen only if it comes from further in.

`PrometheusMetrics` is a `Metrics` that also serves the collector's content in the
Prometheus text format (or OpenMetrics, if the scraper asks for it), rendered by
``prometheus_client`` from a snapshot taken when scraped: on a port it opens (`serve`),
mounted into a web app as ASGI (`asgi`), or as bytes (`render`).
"""

from __future__ import annotations

import asyncio
import functools
import math
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import pykka

from aiowt.actors import MetricsCollector, ServiceHandle, Services, ask, tell_quietly
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import (
    AddGauge,
    HistogramValue,
    Inc,
    MetricsSnapshot,
    Observe,
    TakeSnapshot,
)
from aiowt.transport import Rejected, Session, SessionContext, SessionTap, UsageError
from aiowt.transport.events import (
    DatagramReceived,
    DatagramSent,
    SessionEvent,
    StreamDataReceived,
    StreamDataSent,
    StreamOpened,
)

from ._http import HttpRequest, HttpResponse, RouteHandler, ServesPages
from ._plumbing import observe, report_once, when_accepted
from .chain import CallNext
from .record import SessionRecord

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from prometheus_client.metrics_core import Metric

__all__ = [
    "Metrics",
    "Observer",
    "PrometheusMetrics",
    "TrafficTap",
    "report_error",
    "report_rejection",
    "report_session",
    "render_snapshot",
]

MetricsRef = pykka.ActorRef[MetricsCollector]


class TrafficTap(SessionTap):
    """Counts one session's datagrams, stream frames, bytes and streams, both ways.

    Plain integers bumped on the transport's hot path; read when the session has ended.
    `report_session` puts it before every other tap, so it counts what the transport
    received, including what a limit dropped.
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


# --- the session facts --------------------------------------------------------------------


class _Unobserved:
    """The context manager of an observer that another one, further out, already covers."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_UNOBSERVED: Final = _Unobserved()


def report_session(ctx: SessionContext, metrics: MetricsRef) -> AbstractAsyncContextManager[None]:
    """Report this session's facts to `metrics` around the rest of the chain::

        async with report_session(ctx, ref):
            await call_next(ctx)

    Unless an observer further out already reports this session to the same collector:
    then it does nothing, so a session is counted once however many observers share a
    collector.
    """
    if not report_once(ctx, metrics, "session"):
        return _UNOBSERVED
    route = {"route": ctx.route_pattern}
    traffic = TrafficTap()
    ctx.taps.insert(0, traffic)

    def accepted(_: Session) -> None:
        tell_quietly(metrics, AddGauge(names.SESSIONS_ACTIVE.name, 1, route, peak=_PEAK))
        by_transport = {**route, "transport": ctx.transport}
        tell_quietly(metrics, Inc(names.SESSIONS_ACCEPTED.name, 1, by_transport))

    when_accepted(ctx, accepted)
    return observe(ctx, functools.partial(_report_end, metrics, traffic))


_PEAK: Final = names.SESSIONS_ACTIVE_PEAK.name


def _report_end(
    metrics: MetricsRef,
    traffic: TrafficTap,
    ctx: SessionContext,
    record: SessionRecord,
    error: BaseException | None,
) -> None:
    route = {"route": ctx.route_pattern}
    status = str(record.status)
    labels = {**route, "status": status, "transport": ctx.transport}
    tell_quietly(metrics, Inc(names.HANDSHAKES.name, 1, labels))
    tell_quietly(
        metrics,
        Observe(
            names.HANDSHAKE_SECONDS.name,
            record.handshake_seconds,
            route,
            buckets=names.HANDSHAKE_BUCKETS,
        ),
    )
    if isinstance(error, Rejected):
        report_rejection(ctx, metrics, record.rejected_by or "unknown", record.status)
    if record.duration is not None:
        tell_quietly(metrics, AddGauge(names.SESSIONS_ACTIVE.name, -1, route))
        tell_quietly(
            metrics,
            Observe(
                names.SESSION_SECONDS.name, record.duration, route, buckets=names.SESSION_BUCKETS
            ),
        )
        _report_traffic(metrics, route, traffic)
    if record.failed:
        report_error(ctx, metrics, accepted=record.accepted)


def report_rejection(
    ctx: SessionContext, metrics: MetricsRef | None, middleware: str, status: int
) -> None:
    """Count this session's refusal by `middleware`, once per collector (see `report_once`)."""
    if metrics is not None and report_once(ctx, metrics, "rejection"):
        labels = {"route": ctx.route_pattern, "middleware": middleware, "status": str(status)}
        tell_quietly(metrics, Inc(names.REJECTIONS.name, 1, labels))


def report_error(ctx: SessionContext, metrics: MetricsRef | None, *, accepted: bool) -> None:
    """Count this session's failure, once per collector (see `report_once`)."""
    if metrics is not None and report_once(ctx, metrics, "error"):
        labels = {"route": ctx.route_pattern, "stage": "session" if accepted else "handshake"}
        tell_quietly(metrics, Inc(names.SESSION_ERRORS.name, 1, labels))


def _report_traffic(metrics: MetricsRef, route: dict[str, str], tap: TrafficTap) -> None:
    for spec, value_in, value_out in (
        (names.DATAGRAMS, tap.datagrams_in, tap.datagrams_out),
        (names.DATAGRAM_BYTES, tap.datagram_bytes_in, tap.datagram_bytes_out),
        (names.STREAM_FRAMES, tap.stream_frames_in, tap.stream_frames_out),
        (names.STREAM_BYTES, tap.stream_bytes_in, tap.stream_bytes_out),
    ):
        if value_in:
            tell_quietly(metrics, Inc(spec.name, value_in, {**route, "direction": "in"}))
        if value_out:
            tell_quietly(metrics, Inc(spec.name, value_out, {**route, "direction": "out"}))
    if tap.streams_opened:
        tell_quietly(metrics, Inc(names.STREAMS_OPENED.name, tap.streams_opened, route))


class Observer:
    """The base of the observing middleware: report each session to a collector.

    `metrics` is the collector's ref; without one, the server's is used (its
    `Services`), and outside a server one is started on first use (read it through
    `service`; `aclose()` stops it).
    """

    def __init__(self, metrics: MetricsRef | None = None) -> None:
        self.service: ServiceHandle[MetricsCollector] = ServiceHandle(
            metrics, MetricsCollector.start, "metrics"
        )

    def use_services(self, services: Services, name: str) -> None:
        self.service.bind(services.metrics)

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        async with report_session(ctx, self.service.ref()):
            await call_next(ctx)

    async def snapshot(self) -> MetricsSnapshot:
        """The collector's content now (asks it; starts it if this middleware owns it)."""
        return await ask(self.service.ref(), TakeSnapshot())

    async def aclose(self) -> None:
        """Stop the collector if this middleware started it."""
        await self.service.stop()


class Metrics(Observer):
    """Report sessions to a `MetricsCollector`: verdicts, refusals, times, traffic.

    See the module docstring for what is reported and `Observer` for `metrics`. Every
    report is a ``tell``: nothing here waits for the collector.
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(metrics={self.service!r})"


# --- Prometheus exposition ---------------------------------------------------------------------


def render_snapshot(
    snapshot: MetricsSnapshot, accept: str = "", *, extra: Iterable[Any] = ()
) -> tuple[bytes, str]:
    """`snapshot` in the Prometheus text format, or OpenMetrics when `accept` asks for
    it: (bytes, content type). `extra` are more ``prometheus_client`` collectors to
    include (the process collector, say). Needs the ``prometheus`` extra."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    for collector in extra:
        registry.register(collector)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class _SnapshotCollector:
    """A ``prometheus_client`` collector over one `MetricsSnapshot`."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._snapshot = snapshot

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
            spec = names.SERIES_OVERFLOWED
            base = spec.name.removesuffix("_total")
            metric = Metric(base, spec.help, "counter")
            for name, count in overflowed:
                metric.add_sample(spec.name, {"metric": name}, count)
            yield metric


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
    `process`, the standard ``process_*`` metrics of ``prometheus_client`` are included.
    A circuit breaker shows here when it reports to the same collector (it does when the
    server hands it its `Services`, or when started with ``metrics=``).
    """

    def __init__(
        self,
        metrics: MetricsRef | None = None,
        *,
        path: str = "/metrics",
        breaker: Any = None,
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
        if breaker is not None:
            warnings.warn(
                "PrometheusMetrics(breaker=...) is deprecated and ignored: a breaker reports"
                " its state to its collector (the server's, or the one it was started with)",
                DeprecationWarning,
                stacklevel=2,
            )
        if not isinstance(scrape_timeout, int | float) or scrape_timeout <= 0:
            raise UsageError(f"scrape_timeout must be a positive number, got {scrape_timeout!r}")
        self.path = path
        self.scrape_timeout = float(scrape_timeout)
        # Registered in no registry of its own: it joins each scrape's registry.
        self._process = ProcessCollector(registry=None) if process else None

    def __repr__(self) -> str:
        url = self.serving_url
        serving = f", serving={url}" if url is not None else ""
        return f"PrometheusMetrics(path={self.path!r}, metrics={self.service!r}{serving})"

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (bytes, content type) of the collector now, as `accept` prefers."""
        async with asyncio.timeout(self.scrape_timeout):
            snapshot = await ask(self.service.ref(), TakeSnapshot())
        return render_snapshot(snapshot, accept, extra=(self._process,) if self._process else ())

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
