"""Tracing: a trace id and a span per session, W3C ``traceparent`` in and out, samplers.

`Tracing` is self-contained (seed 002's tracer and seed 000's ``Tracing``): it reads a
W3C ``traceparent`` from the CONNECT request, makes a span id for the session, echoes
``traceparent`` (and ``tracestate``) on the CONNECT response, publishes the
`TraceContext` as `TRACE`, binds ``trace_id`` and ``span_id`` in structlog's
contextvars, and logs the finished span. Which sessions are traced is the sampler's
call (`FixedSampler`, `AdaptiveSampler`), except that a request carrying a valid trace
id is always traced: someone upstream is already following it.

`OTelTracing` hands the same job to OpenTelemetry (the optional ``otel`` extra,
imported only when it is used): the span is a real OTel span, parented by the
request's propagated context, current for the handler's task (so handler code can
start child spans), and sampled by the tracer provider's sampler.

Samplers are called on the event loop only, once per handshake, synchronously; their
state (a counter and a rate) is read and written with no await in between, so no other
session can interleave, and it needs no actor.
"""

from __future__ import annotations

import math
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from aiowt.transport.context import Key, SessionContext
from aiowt.transport.errors import Rejected, UsageError

from ._plumbing import observe
from .chain import CallNext
from .logging import EventLogger, _default_logger
from .record import SessionRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "OTEL_SPAN",
    "TRACE",
    "AdaptiveSampler",
    "FixedSampler",
    "OTelTracing",
    "Sampler",
    "TraceContext",
    "Tracing",
    "parse_traceparent",
]


@runtime_checkable
class Sampler(Protocol):
    """Decides whether a session without an incoming trace is traced."""

    def sample(self) -> bool: ...


class FixedSampler:
    """Trace `percent` percent of sessions (0 to 100), at random (seed 002)."""

    def __init__(self, percent: float, *, rng: random.Random | None = None) -> None:
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not 0 <= percent <= 100
        ):
            raise UsageError(f"percent must be a number from 0 to 100, got {percent!r}")
        self.percent = float(percent)
        self._random = (rng or random.Random()).random

    def __repr__(self) -> str:
        return f"FixedSampler({self.percent:g})"

    def sample(self) -> bool:
        return self._random() * 100 < self.percent


class AdaptiveSampler:
    """Trace about `max_rate` sessions per second, whatever the traffic (seed 002).

    Every `sample_size` sessions it measures the rate they arrived at and sets the
    sampling probability to ``max_rate / rate`` (at most 1). Until the first
    `sample_size` sessions have been seen, every session is traced.
    """

    def __init__(
        self,
        max_rate: float,
        sample_size: int = 1000,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if (
            isinstance(max_rate, bool)
            or not isinstance(max_rate, int | float)
            or not math.isfinite(max_rate)
            or max_rate <= 0
        ):
            raise UsageError(f"max_rate must be a positive number of traces/s, got {max_rate!r}")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise UsageError(f"sample_size must be a positive int, got {sample_size!r}")
        if not callable(clock):
            raise UsageError("clock must be a callable returning seconds")
        self.max_rate = float(max_rate)
        self.sample_size = sample_size
        self._clock = clock
        self._random = (rng or random.Random()).random
        self._count = 0
        self._window_start = clock()
        self._probability = 1.0

    def __repr__(self) -> str:
        return (
            f"AdaptiveSampler(max_rate={self.max_rate:g}, sample_size={self.sample_size}, "
            f"probability={self._probability:.3g})"
        )

    @property
    def probability(self) -> float:
        """The current probability of tracing a session."""
        return self._probability

    def sample(self) -> bool:
        self._count += 1
        if self._count >= self.sample_size:
            now = self._clock()
            elapsed = now - self._window_start
            rate = self._count / elapsed if elapsed > 0 else math.inf
            self._probability = min(1.0, self.max_rate / rate)
            self._count = 0
            self._window_start = now
        return self._random() < self._probability


# --- W3C trace context -----------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]+\Z")


def parse_traceparent(value: str | None) -> tuple[str, str, int] | None:
    """``(trace_id, parent_id, flags)`` from a W3C ``traceparent``, or None if invalid.

    Follows the Trace Context rules: lower-case hex only; version ``ff`` and all-zero
    ids are invalid; version ``00`` is exactly 55 characters; a later version may carry
    more fields after the first four, which are read as version 00's.
    """
    if value is None:
        return None
    value = value.strip()
    if len(value) < 55 or (len(value) > 55 and value[55] != "-"):
        return None
    parts = value[:55].split("-")
    if len(parts) != 4:
        return None
    version, trace_id, parent_id, flags = parts
    if not (
        len(version) == 2
        and _HEX.match(version)
        and version != "ff"
        and (version != "00" or len(value) == 55)
        and len(trace_id) == 32
        and _HEX.match(trace_id)
        and len(parent_id) == 16
        and _HEX.match(parent_id)
        and len(flags) == 2
        and _HEX.match(flags)
        and trace_id != "0" * 32
        and parent_id != "0" * 16
    ):
        return None
    return trace_id, parent_id, int(flags, 16)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A session's place in a trace."""

    trace_id: str
    """32 lower-case hex digits."""
    span_id: str
    """This session's span: 16 lower-case hex digits."""
    parent_id: str | None = None
    """The caller's span, when the request carried a ``traceparent``."""
    tracestate: str | None = None
    """The request's ``tracestate``, passed on unchanged."""

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` naming this session's span (sampled)."""
        return f"00-{self.trace_id}-{self.span_id}-01"


TRACE: Key[TraceContext] = Key("aiowt.trace")
"""The session's `TraceContext`, set by `Tracing` when the session is traced."""


def _new_id(nbytes: int) -> str:
    while True:
        value = secrets.token_hex(nbytes)
        if value.strip("0"):  # all-zero ids are invalid
            return value


class Tracing:
    """A trace id and a span per traced session, W3C ``traceparent`` honoured and echoed.

    - A CONNECT with a valid ``traceparent`` is always traced, in that trace, as a
      child of the caller's span; otherwise `sampler` decides (default: every session)
      and a new trace starts.
    - The session's `TraceContext` is in `TRACE`; ``traceparent`` (and the request's
      ``tracestate``) go back on the CONNECT response, accepted or refused;
      ``trace_id`` and ``span_id`` are bound in structlog's contextvars.
    - When the session ends (or is refused), ``span ended`` is logged with the ids,
      ``name`` (``"WT <route>"``), ``start`` (wall clock), ``duration``, ``status``.
    """

    def __init__(self, sampler: Sampler | None = None, *, logger: EventLogger | None = None):
        if sampler is not None and not isinstance(sampler, Sampler):
            raise UsageError(f"sampler needs a sample() -> bool method, got {sampler!r}")
        self.sampler = sampler if sampler is not None else FixedSampler(100)
        self._given = logger
        self.logger = logger if logger is not None else _default_logger("aiowt.tracing")

    def __repr__(self) -> str:
        return f"Tracing(sampler={self.sampler!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        incoming = parse_traceparent(ctx.request.header("traceparent"))
        if incoming is not None:
            trace_id, parent_id = incoming[0], incoming[1]
        elif self.sampler.sample():
            trace_id, parent_id = _new_id(16), None
        else:
            await call_next(ctx)
            return
        trace = TraceContext(
            trace_id=trace_id,
            span_id=_new_id(8),
            parent_id=parent_id,
            tracestate=ctx.request.header("tracestate") if incoming is not None else None,
        )
        ctx.set(TRACE, trace)
        ctx.add_response_header("traceparent", trace.traceparent)
        if trace.tracestate:
            ctx.add_response_header("tracestate", trace.tracestate)
        with structlog.contextvars.bound_contextvars(
            trace_id=trace.trace_id, span_id=trace.span_id
        ):
            async with observe(ctx, lambda c, r, e: self._log_span(trace, c, r)):
                await call_next(ctx)

    def _log_span(self, trace: TraceContext, ctx: SessionContext, record: SessionRecord) -> None:
        self.logger.info(
            "span ended",
            trace_id=trace.trace_id,
            span_id=trace.span_id,
            parent_id=trace.parent_id,
            name=f"WT {ctx.route_pattern}",
            start=record.start_time.isoformat(),
            duration=round(record.elapsed, 6),
            status=record.status,
            **({"error": record.error} if record.error else {}),
        )


# --- OpenTelemetry ---------------------------------------------------------------------------

OTEL_SPAN: Key[Any] = Key("aiowt.otel_span")
"""The session's OpenTelemetry ``Span``, set by `OTelTracing` (typed `Any` so that
``opentelemetry`` stays optional); handlers add attributes and events to it."""


class OTelTracing:
    """One OpenTelemetry server span per session (seed 000's ``OTelTracing``).

    Needs the ``otel`` extra (``opentelemetry-api``). `tracer` defaults to
    ``trace.get_tracer("aiowt")`` (the global provider's). The parent is extracted from
    the CONNECT headers with the global propagator (W3C ``traceparent`` by default) and
    the span's context is injected into the CONNECT response headers. The span is
    current while the session runs, so spans started by the handler are its children.

    Attributes follow the HTTP semantic conventions where they fit
    (``http.request.method``, ``http.route``, ``url.path``, ``client.address``,
    ``user_agent.original``, ``http.response.status_code``) plus ``aiowt.*`` ones
    (session id, bytes, close code, the rejecting middleware). A refusal with a 5xx or
    an exception marks the span as an error; a 4xx refusal does not (it is the
    client's, per the conventions for server spans).
    """

    def __init__(self, tracer: Tracer | None = None) -> None:
        try:
            from opentelemetry import propagate, trace
        except ImportError:  # pragma: no cover - the extra is installed for the tests
            raise UsageError("OTelTracing needs OpenTelemetry: pip install 'aiowt[otel]'") from None
        if tracer is not None and not callable(getattr(tracer, "start_as_current_span", None)):
            raise UsageError(f"tracer must be an OpenTelemetry Tracer, got {tracer!r}")
        self._given = tracer
        self.tracer: Tracer = tracer if tracer is not None else trace.get_tracer("aiowt")
        self._trace = trace
        self._propagate = propagate

    def __repr__(self) -> str:
        return f"OTelTracing(tracer={'global' if self._given is None else repr(self._given)})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        trace = self._trace
        carrier = {name: value for name, value in reversed(ctx.headers)}  # first one wins
        parent = self._propagate.extract(carrier)
        host, port = ctx.remote_addr
        attributes: dict[str, str | int] = {
            "http.request.method": ctx.method,
            "http.route": ctx.route_pattern,
            "url.path": ctx.path,
            "url.scheme": ctx.request.scheme,
            "client.address": host,
            "client.port": port,
            "network.protocol.name": "http",
            "network.protocol.version": "3",
            "aiowt.session_id": ctx.session_id,
        }
        if ctx.user_agent:
            attributes["user_agent.original"] = ctx.user_agent
        with self.tracer.start_as_current_span(
            f"WT {ctx.route_pattern}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            ctx.set(OTEL_SPAN, span)
            outgoing: dict[str, str] = {}
            self._propagate.inject(outgoing)
            for name, value in outgoing.items():
                ctx.add_response_header(name, value)
            span_context = span.get_span_context()
            with structlog.contextvars.bound_contextvars(
                trace_id=trace.format_trace_id(span_context.trace_id),
                span_id=trace.format_span_id(span_context.span_id),
            ):
                async with observe(ctx, lambda c, r, e: self._finish(span, c, r, e)):
                    await call_next(ctx)

    @staticmethod
    def _finish(
        span: Span, ctx: SessionContext, record: SessionRecord, error: BaseException | None
    ) -> None:
        from opentelemetry.trace import Status, StatusCode

        status = record.status
        span.set_attributes(
            {
                "aiowt.request_id": ctx.request_id or ctx.session_id,
                "aiowt.bytes_in": record.bytes_in,
                "aiowt.bytes_out": record.bytes_out,
            }
        )
        if record.close_code is not None:
            span.set_attribute("aiowt.close_code", record.close_code)
        if record.rejected_by is not None:
            span.set_attribute("aiowt.rejected_by", record.rejected_by)
        span.set_attribute("http.response.status_code", status)
        if error is not None and not isinstance(error, Rejected):
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        elif status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
