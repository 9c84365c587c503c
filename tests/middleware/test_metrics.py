"""Metrics into the MetricsCollector, Prometheus exposition checked against known traffic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aiowt import Server
from aiowt.actors import Breaker as BreakerActor
from aiowt.actors import ask
from aiowt.actors.breaker import GetBreakerStatus, SessionFailed
from aiowt.actors.metrics import Inc, MetricsCollector, Observe, TakeSnapshot
from aiowt.middleware._http import HttpEndpoint, HttpRequest, HttpResponse
from aiowt.middleware.chain import CallNext
from aiowt.middleware.metrics import Metrics, PrometheusMetrics, TrafficTap
from aiowt.middleware.stats import ConcurrencyStats
from aiowt.middleware.status import Status
from aiowt.transport import HandshakeError, Rejected, SessionContext, UsageError
from aiowt.transport.events import (
    DatagramReceived,
    DatagramSent,
    StreamDataReceived,
    StreamDataSent,
    StreamOpened,
)
from examples.echo import Echo
from tests.conftest import TRANSPORT, ClientFactory, ServerFactory, Unwound, bounded


class Bouncer:
    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        if ctx.request.header("x-pass") is None:
            raise Rejected(403, "no pass")
        await call_next(ctx)


@pytest.fixture
async def collector() -> AsyncIterator[Any]:
    ref = MetricsCollector.start()
    yield ref
    await ref.stop(block=False)


async def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """A plain HTTP/1.1 GET: status, content type, body."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    async with bounded():
        reader, writer = await asyncio.open_connection(host, int(port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n{extra}\r\n".encode())
        response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields.get("Content-Type", ""), body


def samples(text: str) -> dict[str, list[Sample]]:
    """Every sample of the page, by sample name, parsed by prometheus_client's parser."""
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [s.value for s in found.get(name, []) if labels.items() <= s.labels.items()]
    assert len(matching) == 1, (name, labels, found.get(name))
    return matching[0]


async def known_traffic(server: Server, client: ClientFactory, unwound: Unwound) -> None:
    """Two accepted sessions with known traffic, one refusal."""
    first = await client(server, "/echo/lobby", headers=[("x-pass", "1")])
    async with bounded():
        for _ in range(3):
            first.send_datagram(b"d" * 10)
            assert await first.receive_datagram() == b"d" * 10
        stream = first.open_stream()
        stream.write(b"s" * 100, end_stream=True)
        assert await stream.read_all() == b"s" * 100
    await first.aclose()
    second = await client(server, "/echo/kitchen", headers=[("x-pass", "1")])
    await second.aclose()
    with pytest.raises(HandshakeError):
        await client(server, "/echo/lobby")
    await unwound.wait(3)


async def test_prometheus_page_matches_known_traffic(
    make_server: ServerFactory, client: ClientFactory, collector: Any
) -> None:
    unwound = Unwound()
    prom = PrometheusMetrics(collector)
    server = await make_server(
        lambda s: s.use(unwound, prom, Bouncer()).route("/echo/{room}", Echo)
    )
    endpoint = await prom.serve()
    await known_traffic(server, client, unwound)

    status, content_type, body = await http_get(f"{endpoint.url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    found = samples(text)
    route = {"route": "/echo/{room}"}
    by_transport = {**route, "transport": TRANSPORT}
    assert value(found, "aiowt_sessions_accepted_total", **by_transport) == 2
    assert value(found, "aiowt_sessions_active", **route) == 0
    assert value(found, "aiowt_sessions_active_peak") == 1
    assert value(found, "aiowt_handshakes_total", **by_transport, status="200") == 2
    assert value(found, "aiowt_handshakes_total", **by_transport, status="403") == 1
    assert (
        value(
            found, "aiowt_handshake_rejections_total", **route, middleware="Bouncer", status="403"
        )
        == 1
    )
    assert value(found, "aiowt_datagrams_total", **route, direction="in") == 3
    assert value(found, "aiowt_datagrams_total", **route, direction="out") == 3
    assert value(found, "aiowt_datagram_bytes_total", **route, direction="in") == 30
    assert value(found, "aiowt_datagram_bytes_total", **route, direction="out") == 30
    assert value(found, "aiowt_stream_bytes_total", **route, direction="in") == 100
    assert value(found, "aiowt_stream_bytes_total", **route, direction="out") == 100
    assert value(found, "aiowt_stream_frames_total", **route, direction="in") >= 1
    assert value(found, "aiowt_streams_opened_total", **route) == 1
    assert value(found, "aiowt_session_duration_seconds_count", **route) == 2
    assert value(found, "aiowt_handshake_duration_seconds_count", **route) == 3
    assert value(found, "aiowt_session_duration_seconds_bucket", **route, le="+Inf") == 2
    assert "aiowt_session_errors_total" not in found
    # Cardinality: the raw paths never become label values.
    assert "/echo/lobby" not in text
    assert "/echo/kitchen" not in text
    assert "process_cpu_seconds_total" in found
    await prom.aclose()


async def test_openmetrics_is_served_when_asked_for(
    make_server: ServerFactory, client: ClientFactory, collector: Any
) -> None:
    collector.tell(Inc("aiowt_things_total", 2, {"kind": "a"}, help="Things."))
    prom = PrometheusMetrics(collector, path="/m", process=False)
    endpoint = await prom.serve()
    status, content_type, body = await http_get(
        f"{endpoint.url}/m", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert 'aiowt_things_total{kind="a"} 2.0' in body.decode()
    assert "process_" not in body.decode()
    await prom.aclose()


async def test_render_shows_what_other_reporters_put_in_the_collector(collector: Any) -> None:
    collector.tell(Inc("app_refusals_total", 1, {"middleware": "RateLimit", "status": "429"}))
    collector.tell(Observe("app_latency_seconds", 0.3, buckets=(0.1, 0.5)))
    collector.tell(Inc("app_jobs", 4))  # a counter named without _total
    prom = PrometheusMetrics(collector, process=False)
    body, _ = await prom.render()
    found = samples(body.decode())
    assert value(found, "app_refusals_total", middleware="RateLimit") == 1
    assert value(found, "app_latency_seconds_bucket", le="0.1") == 0
    assert value(found, "app_latency_seconds_bucket", le="0.5") == 1
    assert value(found, "app_latency_seconds_sum") == pytest.approx(0.3)
    assert value(found, "app_jobs_total") == 4


async def test_series_past_the_cap_are_shown_as_overflow() -> None:
    ref = MetricsCollector.start(max_series=2)
    for n in range(5):
        ref.tell(Inc("app_hits_total", 1, {"user": str(n)}))
    body, _ = await PrometheusMetrics(ref, process=False).render()
    found = samples(body.decode())
    assert value(found, "app_hits_total", overflow="true") == 3
    assert value(found, "aiowt_metric_series_overflowed_total", metric="app_hits_total") == 3
    await ref.stop(block=False)


async def test_breaker_state_is_exposed(collector: Any) -> None:
    breaker = BreakerActor.start(threshold=1, metrics=collector)
    prom = PrometheusMetrics(collector, process=False)
    await ask(breaker, GetBreakerStatus())  # its first report is in the collector's inbox
    found = samples((await prom.render())[0].decode())
    assert value(found, "aiowt_circuit_breaker_state", state="closed") == 1
    assert value(found, "aiowt_circuit_breaker_state", state="open") == 0
    await ask(breaker, SessionFailed())
    await ask(breaker, GetBreakerStatus())
    found = samples((await prom.render())[0].decode())
    assert value(found, "aiowt_circuit_breaker_state", state="open") == 1
    assert value(found, "aiowt_circuit_breaker_state", state="closed") == 0
    assert value(found, "aiowt_circuit_breaker_transitions_total", to="open") == 1
    await breaker.stop(block=False)


def test_the_breaker_option_of_prometheus_metrics_is_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match="reports its state"):
        PrometheusMetrics(breaker=object(), process=False)


async def test_a_dead_collector_is_a_503_not_a_hang(collector: Any) -> None:
    prom = PrometheusMetrics(collector, process=False)
    endpoint = await prom.serve()
    await collector.stop(block=False)
    status, _, _ = await http_get(f"{endpoint.url}/metrics")
    assert status == 503
    await prom.aclose()


async def test_metrics_reports_to_the_servers_collector_when_given_none(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    unwound = Unwound()
    metrics = Metrics()
    server = await make_server(lambda s: s.use(unwound, metrics).route("/echo/{room}", Echo))
    session = await client(server, "/echo/a")
    await session.aclose()
    await unwound.wait(1)
    assert metrics.service.started is server.services.metrics
    snapshot = await ask(server.services.metrics, TakeSnapshot())
    accepted = {"route": "/echo/{room}", "transport": TRANSPORT}
    assert snapshot.value("aiowt_sessions_accepted_total", accepted) == 1


async def test_metrics_owns_a_collector_outside_a_server() -> None:
    metrics = Metrics()
    assert (await metrics.snapshot()).families == {}
    own = metrics.service.started
    assert own is not None
    assert own.is_alive()
    await metrics.aclose()
    assert metrics.service.started is None
    assert not own.is_alive()


async def test_observers_sharing_a_collector_count_each_session_once(
    make_server: ServerFactory, client: ClientFactory, collector: Any
) -> None:
    unwound = Unwound()
    server = await make_server(
        lambda s: s.use(unwound, Metrics(collector), Status(collector), Metrics(collector)).route(
            "/echo/{room}", Echo, ConcurrencyStats(metrics=collector), Bouncer()
        )
    )
    await client(server, "/echo/a", headers=[("x-pass", "1")])
    with pytest.raises(HandshakeError):
        await client(server, "/echo/b")
    await unwound.wait(1)
    snapshot = await ask(collector, TakeSnapshot())
    route = {"route": "/echo/{room}"}
    by_transport = {**route, "transport": TRANSPORT}
    assert snapshot.value("aiowt_sessions_accepted_total", by_transport) == 1
    assert snapshot.value("aiowt_handshakes_total", {**by_transport, "status": "403"}) == 1
    refused = {**route, "middleware": "Bouncer", "status": "403"}
    assert snapshot.value("aiowt_handshake_rejections_total", refused) == 1


async def test_handler_failures_are_counted(
    make_server: ServerFactory, client: ClientFactory, collector: Any
) -> None:
    from aiowt.actors import Handler

    class Crashes(Handler):
        async def on_datagram(self, data: bytes) -> None:
            raise RuntimeError("bug")

    unwound = Unwound()
    server = await make_server(lambda s: s.use(unwound, Metrics(collector)).route("/c", Crashes))
    session = await client(server, "/c")
    session.send_datagram(b"x")
    await unwound.wait(1)
    snapshot = await ask(collector, TakeSnapshot())
    assert snapshot.value("aiowt_session_errors_total", {"route": "/c", "stage": "session"}) == 1
    assert snapshot.value("aiowt_sessions_active", {"route": "/c"}) == 0


def test_traffic_tap_counts() -> None:
    tap = TrafficTap()
    session: Any = None
    stream: Any = None
    assert tap.observe(session, DatagramReceived(b"x" * 5))
    tap.observe(session, DatagramSent(b"x" * 7))
    assert tap.observe(session, StreamOpened(stream))
    assert tap.observe(session, StreamDataReceived(stream, b"x" * 11, False))
    assert tap.observe(session, StreamDataReceived(stream, b"", True))  # a bare FIN: no frame
    tap.observe(session, StreamDataSent(stream, b"x" * 13, False))
    assert (tap.datagrams_in, tap.datagram_bytes_in, tap.datagrams_out) == (1, 5, 1)
    assert (tap.stream_frames_in, tap.stream_bytes_in, tap.stream_bytes_out) == (1, 11, 13)
    assert tap.streams_opened == 1


def test_validation_and_repr() -> None:
    with pytest.raises(UsageError):
        Metrics("collector")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        PrometheusMetrics(path="metrics")
    with pytest.raises(UsageError):
        PrometheusMetrics(scrape_timeout=0)
    assert repr(Metrics()) == "Metrics(metrics=ServiceHandle(metrics, not started))"
    assert repr(PrometheusMetrics()).startswith("PrometheusMetrics(path='/metrics'")


# --- the HTTP endpoint -------------------------------------------------------------------------


async def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, f"hello {request.query}".encode())


async def broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("bug")


async def raw_request(endpoint: HttpEndpoint, data: bytes) -> bytes:
    host, port = endpoint.address
    async with bounded():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(data)
        response = await reader.read()
        writer.close()
    return response


async def test_http_endpoint_answers() -> None:
    async with await HttpEndpoint({"/hi": hello, "/broken": broken}).start() as endpoint:
        assert (await http_get(f"{endpoint.url}/hi?x=1"))[::2] == (200, b"hello x=1")
        assert (await http_get(f"{endpoint.url}/nope"))[0] == 404
        assert (await http_get(f"{endpoint.url}/broken"))[0] == 500
        post = await raw_request(endpoint, b"POST /hi HTTP/1.1\r\nHost: x\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405")
        assert b"allow: GET, HEAD" in post
        head = await raw_request(endpoint, b"HEAD /hi HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert head.endswith(b"\r\n\r\n")
        huge = await raw_request(endpoint, b"GET /hi HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 431")
        junk = await raw_request(endpoint, b"hello\r\n\r\n")
        assert junk.startswith(b"HTTP/1.1 400")
        assert "http://127.0.0.1:" in repr(endpoint)


async def test_http_endpoint_drops_a_silent_client() -> None:
    endpoint = await HttpEndpoint({"/hi": hello}, read_timeout=0.1).start()
    host, port = endpoint.address
    reader, writer = await asyncio.open_connection(host, port)
    async with bounded(2):
        assert await reader.read() == b""  # closed by the server, nothing said
    writer.close()
    await endpoint.aclose()


async def test_asgi_app_strips_the_mount_prefix() -> None:
    endpoint = HttpEndpoint({"/hi": hello})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/ops/hi",
        "root_path": "/ops",
        "query_string": b"q=2",
        "headers": [(b"accept", b"*/*")],
    }
    await endpoint.asgi(scope, receive, send)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"hello q=2"

    lifespan = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent.clear()

    async def receive_lifespan() -> Any:
        return next(lifespan)

    await endpoint.asgi({"type": "lifespan"}, receive_lifespan, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_prometheus_asgi_app(collector: Any) -> None:
    collector.tell(Inc("aiowt_x_total"))
    prom = PrometheusMetrics(collector, process=False)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": []}
    await prom.asgi(scope, receive, send)
    assert sent[0]["status"] == 200
    assert b"aiowt_x_total 1.0" in sent[1]["body"]


def test_http_endpoint_validates() -> None:
    with pytest.raises(UsageError):
        HttpEndpoint({"metrics": hello})
    with pytest.raises(UsageError):
        HttpEndpoint({"/m": "nope"})  # type: ignore[dict-item]
    with pytest.raises(UsageError):
        HttpEndpoint({}, read_timeout=0)
