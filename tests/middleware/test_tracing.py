"""Tracing: W3C traceparent in and out, samplers, the span log; OTelTracing with the SDK."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from aiowt import Server
from aiowt.actors import Handler
from aiowt.middleware.chain import CallNext
from aiowt.middleware.tracing import (
    OTEL_SPAN,
    TRACE,
    AdaptiveSampler,
    FixedSampler,
    OTelTracing,
    TraceContext,
    Tracing,
    parse_traceparent,
)
from aiowt.transport import HandshakeError, Rejected, SessionContext, UsageError
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

handler_log = structlog.get_logger("tests.tracing")


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


async def bouncer(ctx: SessionContext, call_next: CallNext) -> None:
    if ctx.request.header("x-pass") is None:
        raise Rejected(401, "who are you")
    await call_next(ctx)


async def open_and_close(server: Server, client: ClientFactory, path: str, **options: Any) -> Any:
    """Open a session, close it, wait until the server is done; return the client session."""
    session = await client(server, path, **options)
    async with bounded():
        await session.aclose()
        await server.wait_idle()
    return session


# --- traceparent parsing -----------------------------------------------------------------------


def test_parse_traceparent_accepts_the_spec_example() -> None:
    assert parse_traceparent(TRACEPARENT) == (TRACE_ID, PARENT_ID, 1)
    assert parse_traceparent(f" {TRACEPARENT} ") == (TRACE_ID, PARENT_ID, 1)
    # A later version may append fields; the first four are read as version 00's.
    assert parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-00-extra") == (TRACE_ID, PARENT_ID, 0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is invalid
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-1",
        f"00_{TRACE_ID}_{PARENT_ID}_01",
        f"cc-{TRACE_ID}-{PARENT_ID}-01x",
    ],
)
def test_parse_traceparent_rejects_invalid_values(value: str | None) -> None:
    assert parse_traceparent(value) is None


@given(st.text(max_size=80))
def test_parse_traceparent_never_raises(value: str) -> None:
    result = parse_traceparent(value)
    assert result is None or (len(result[0]), len(result[1])) == (32, 16)


# --- samplers ----------------------------------------------------------------------------------


def test_fixed_sampler() -> None:
    assert not any(FixedSampler(0).sample() for _ in range(1000))
    assert all(FixedSampler(100).sample() for _ in range(1000))
    sampler = FixedSampler(25, rng=random.Random(7))
    hits = sum(sampler.sample() for _ in range(10_000))
    assert 2300 < hits < 2700
    assert repr(sampler) == "FixedSampler(25)"
    for bad in (-1, 101, "50", True):
        with pytest.raises(UsageError):
            FixedSampler(bad)  # type: ignore[arg-type]


def test_adaptive_sampler_holds_the_target_rate() -> None:
    now = [0.0]
    sampler = AdaptiveSampler(10, sample_size=100, clock=lambda: now[0], rng=random.Random(3))
    # Until the first window is complete, everything is traced.
    for _ in range(99):
        now[0] += 0.01
        assert sampler.sample()
    # 100 sessions per second against a target of 10 traces per second: 1 in 10.
    hits = 0
    for _ in range(10_000):
        now[0] += 0.01
        hits += sampler.sample()
    assert sampler.probability == pytest.approx(0.1)
    assert 850 < hits < 1150
    # Traffic drops to 5 sessions per second: below the target, trace them all.
    for _ in range(200):
        now[0] += 0.2
        sampler.sample()
    assert sampler.probability == 1.0
    assert "max_rate=10" in repr(sampler)


@pytest.mark.parametrize(
    "options", [{"max_rate": 0}, {"max_rate": float("inf")}, {"max_rate": 1, "sample_size": 0}]
)
def test_adaptive_sampler_validates(options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        AdaptiveSampler(**options)


def test_tracing_validates_its_sampler() -> None:
    with pytest.raises(UsageError):
        Tracing(sampler=0.5)  # type: ignore[arg-type]
    assert repr(Tracing()) == "Tracing(sampler=FixedSampler(100))"


# --- Tracing -----------------------------------------------------------------------------------


class SeesTrace(Handler):
    """Records the session's TraceContext and logs a line."""

    seen: asyncio.Queue[TraceContext | None]

    async def on_start(self) -> None:
        handler_log.info("handler says hi")
        self.seen.put_nowait(self.ctx.get(TRACE, None))


@pytest.fixture
def seen() -> asyncio.Queue[TraceContext | None]:
    SeesTrace.seen = asyncio.Queue()
    return SeesTrace.seen


async def test_incoming_traceparent_is_honoured_and_echoed(
    make_server: ServerFactory,
    client: ClientFactory,
    logs: list[dict[str, Any]],
    seen: asyncio.Queue[TraceContext | None],
) -> None:
    server = await make_server(lambda s: s.use(Tracing(FixedSampler(0))).route("/t", SeesTrace))
    session = await open_and_close(
        server, client, "/t", headers=[("traceparent", TRACEPARENT), ("tracestate", "k=v")]
    )
    trace = await asyncio.wait_for(seen.get(), 5)
    assert trace is not None
    # Always traced despite a 0% sampler: the caller is already tracing this request.
    assert (trace.trace_id, trace.parent_id, trace.tracestate) == (TRACE_ID, PARENT_ID, "k=v")
    assert trace.span_id != PARENT_ID
    assert session.request.header("traceparent") == f"00-{TRACE_ID}-{trace.span_id}-01"
    assert session.request.header("tracestate") == "k=v"
    [span] = [e for e in logs if e["event"] == "span ended"]
    assert (span["trace_id"], span["span_id"], span["parent_id"]) == (
        TRACE_ID,
        trace.span_id,
        PARENT_ID,
    )
    assert span["name"] == "WT /t"
    assert span["status"] == 200
    [hi] = [e for e in logs if e["event"] == "handler says hi"]
    assert (hi["trace_id"], hi["span_id"]) == (TRACE_ID, trace.span_id)


async def test_sampler_decides_for_requests_without_a_trace(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[TraceContext | None]
) -> None:
    server = await make_server(
        lambda s: s.route("/never", SeesTrace, Tracing(FixedSampler(0))).route(
            "/always", SeesTrace, Tracing()
        )
    )
    untraced = await open_and_close(server, client, "/never")
    assert await asyncio.wait_for(seen.get(), 5) is None
    assert untraced.request.header("traceparent") is None
    # An invalid traceparent is ignored, not honoured.
    await open_and_close(server, client, "/never", headers=[("traceparent", "00-zz-zz-01")])
    assert await asyncio.wait_for(seen.get(), 5) is None

    traced = await open_and_close(server, client, "/always")
    trace = await asyncio.wait_for(seen.get(), 5)
    assert trace is not None
    assert trace.parent_id is None
    assert parse_traceparent(traced.request.header("traceparent")) == (
        trace.trace_id,
        trace.span_id,
        1,
    )


async def test_refused_sessions_are_traced_and_echo_the_traceparent(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(lambda s: s.use(Tracing(), bouncer).route("/t", Echo))
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/t", headers=[("traceparent", TRACEPARENT)])
    echoed = dict(caught.value.headers)["traceparent"]
    assert echoed.startswith(f"00-{TRACE_ID}-")
    [span] = [e for e in logs if e["event"] == "span ended"]
    assert span["status"] == 401


# --- OTelTracing -------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> otel_trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("tests")


class Working(Handler):
    """Starts a child span from inside the handler, using only the current context."""

    tracer: otel_trace.Tracer

    async def on_start(self) -> None:
        with self.tracer.start_as_current_span("handler work"):
            pass
        self.ctx.get(OTEL_SPAN).set_attribute("app.room", "lobby")

    async def on_datagram(self, data: bytes) -> None:
        raise RuntimeError("handler bug")


def finished(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


async def test_otel_span_per_session_with_parent_attributes_and_children(
    make_server: ServerFactory,
    client: ClientFactory,
    exporter: InMemorySpanExporter,
    tracer: otel_trace.Tracer,
) -> None:
    Working.tracer = tracer
    server = await make_server(lambda s: s.use(OTelTracing(tracer)).route("/w/{room}", Working))
    session = await open_and_close(
        server, client, "/w/lobby", headers=[("traceparent", TRACEPARENT), ("user-agent", "ua")]
    )
    span = finished(exporter, "WT /w/{room}")
    assert span.kind == SpanKind.SERVER
    assert span.context is not None
    assert span.parent is not None
    assert otel_trace.format_trace_id(span.context.trace_id) == TRACE_ID
    assert otel_trace.format_span_id(span.parent.span_id) == PARENT_ID
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/w/{room}"
    assert span.attributes["url.path"] == "/w/lobby"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["user_agent.original"] == "ua"
    assert span.attributes["app.room"] == "lobby"
    assert span.attributes["aiowt.close_code"] == 0
    assert span.status.status_code == StatusCode.UNSET
    child = finished(exporter, "handler work")
    assert child.parent is not None
    assert child.parent.span_id == span.context.span_id
    echoed = parse_traceparent(session.request.header("traceparent"))
    assert echoed is not None
    assert echoed[:2] == (TRACE_ID, otel_trace.format_span_id(span.context.span_id))


async def test_otel_span_marks_failures_but_not_client_refusals(
    make_server: ServerFactory,
    client: ClientFactory,
    exporter: InMemorySpanExporter,
    tracer: otel_trace.Tracer,
) -> None:
    Working.tracer = tracer
    server = await make_server(lambda s: s.use(OTelTracing(tracer), bouncer).route("/w", Working))
    with pytest.raises(HandshakeError):
        await client(server, "/w")
    refused = finished(exporter, "WT /w")
    assert refused.attributes is not None
    assert refused.attributes["http.response.status_code"] == 401
    assert refused.attributes["aiowt.rejected_by"] == "bouncer"
    assert refused.status.status_code == StatusCode.UNSET
    exporter.clear()

    session = await client(server, "/w", headers=[("x-pass", "1")])
    session.send_datagram(b"crash")
    async with bounded():
        await session.wait_closed()
        await server.wait_idle()
    crashed = finished(exporter, "WT /w")
    assert crashed.status.status_code == StatusCode.ERROR
    assert crashed.attributes is not None
    assert crashed.attributes["error.type"] == "RuntimeError"
    assert any(event.name == "exception" for event in crashed.events)


def test_otel_tracing_validates_and_has_a_repr(tracer: otel_trace.Tracer) -> None:
    with pytest.raises(UsageError):
        OTelTracing(tracer="nope")  # type: ignore[arg-type]
    assert repr(OTelTracing()) == "OTelTracing(tracer=global)"
