"""The catalogue of the metrics aiowt reports: one name per fact.

Every metric aiowt itself puts in a `MetricsCollector` is declared here, with its kind,
its labels and its help text (the collector takes the help from here, so a family is
documented whichever sample creates it). Names follow Prometheus' conventions: a
counter ends in ``_total``, a unit is spelled out (``_seconds``, ``_bytes``), labels are
few and bounded (``route`` is the route *pattern*, never the raw path).

Who reports what:

- **Sessions.** The observing middleware (`Metrics`, `PrometheusMetrics`, `Status`,
  `ConcurrencyStats`, `Bandwidth`) report the session facts. However many of them share
  a collector, each session is reported to it once, by the outermost of them: two
  observers in one chain never count a session twice.
- **Refusals and failures** can also come from the middleware that cause them (the
  limits, `CircuitBreaker`, `Recover`, with a collector); a refusal or failure is still
  counted once per session and collector, by whichever reports it first.
- **Limits and the breaker** report their own facts (excess messages, refused streams,
  breaker state).

Your own metrics go in the same collector under your own prefix; `docs/observability.md`
lists this catalogue, and a test checks the list against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "BACKEND_CONNECTED",
    "BACKEND_STATE_CHANGES",
    "BREAKER_FAILURES",
    "BREAKER_STATE",
    "BREAKER_TRANSITIONS",
    "CATALOGUE",
    "DATAGRAMS",
    "DATAGRAM_BYTES",
    "HANDSHAKES",
    "HANDSHAKE_BUCKETS",
    "HANDSHAKE_SECONDS",
    "REJECTIONS",
    "SESSIONS_ACCEPTED",
    "SESSIONS_ACTIVE",
    "SESSIONS_ACTIVE_PEAK",
    "SESSION_BUCKETS",
    "SESSION_ERRORS",
    "SESSION_SECONDS",
    "SERIES_OVERFLOWED",
    "STREAMS_OPENED",
    "STREAMS_REFUSED",
    "STREAM_BYTES",
    "STREAM_FRAMES",
    "TOKEN_BUCKET_EXCESS",
    "WEBHOOK_EVENTS",
    "WORKERS",
    "MetricSpec",
]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of the catalogue: its name, kind, labels and what it counts."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    help: str


HANDSHAKE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: a handshake is milliseconds, unless a middleware waits on something slow."""

SESSION_BUCKETS: Final = (
    0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
)  # fmt: skip
"""Seconds: sessions live from a moment to a day."""

# --- sessions and handshakes --------------------------------------------------------------

HANDSHAKES: Final = MetricSpec(
    "aiowt_handshakes_total",
    "counter",
    ("route", "status", "transport"),
    "Session requests answered, by route, response status and transport.",
)
HANDSHAKE_SECONDS: Final = MetricSpec(
    "aiowt_handshake_duration_seconds",
    "histogram",
    ("route",),
    "Seconds from a CONNECT request to its verdict (accepted or refused).",
)
REJECTIONS: Final = MetricSpec(
    "aiowt_handshake_rejections_total",
    "counter",
    ("route", "middleware", "status"),
    "CONNECT requests a middleware refused, by route, refusing middleware and status.",
)
SESSIONS_ACCEPTED: Final = MetricSpec(
    "aiowt_sessions_accepted_total",
    "counter",
    ("route", "transport"),
    "Sessions accepted, by route and transport (webtransport or websocket).",
)
SESSIONS_ACTIVE: Final = MetricSpec(
    "aiowt_sessions_active", "gauge", ("route",), "Sessions accepted and not ended, by route."
)
SESSIONS_ACTIVE_PEAK: Final = MetricSpec(
    "aiowt_sessions_active_peak", "gauge", (), "The most sessions active at once, all routes."
)
SESSION_SECONDS: Final = MetricSpec(
    "aiowt_session_duration_seconds",
    "histogram",
    ("route",),
    "Seconds from the acceptance of a session to its end.",
)
SESSION_ERRORS: Final = MetricSpec(
    "aiowt_session_errors_total",
    "counter",
    ("route", "stage"),
    "Handshakes (stage=handshake) and sessions (stage=session) ended by an exception.",
)

# --- traffic, counted at the transport ------------------------------------------------

DATAGRAMS: Final = MetricSpec(
    "aiowt_datagrams_total", "counter", ("route", "direction"), "Datagrams, in and out."
)
DATAGRAM_BYTES: Final = MetricSpec(
    "aiowt_datagram_bytes_total",
    "counter",
    ("route", "direction"),
    "Datagram payload bytes, in and out.",
)
STREAM_FRAMES: Final = MetricSpec(
    "aiowt_stream_frames_total",
    "counter",
    ("route", "direction"),
    "Stream data chunks as the transport delivered (in) or was given (out) them.",
)
STREAM_BYTES: Final = MetricSpec(
    "aiowt_stream_bytes_total",
    "counter",
    ("route", "direction"),
    "Stream payload bytes, in and out.",
)
STREAMS_OPENED: Final = MetricSpec(
    "aiowt_streams_opened_total", "counter", ("route",), "Streams the peer opened."
)

# --- limits --------------------------------------------------------------------------------

TOKEN_BUCKET_EXCESS: Final = MetricSpec(
    "aiowt_token_bucket_excess_total",
    "counter",
    ("kind", "action"),
    "Datagrams and stream chunks over a session's token bucket, and what was done.",
)
STREAMS_REFUSED: Final = MetricSpec(
    "aiowt_streams_refused_total",
    "counter",
    ("middleware",),
    "Peer streams refused (reset with StreamErrorCode.REFUSED).",
)

# --- the circuit breaker ----------------------------------------------------------------

BREAKER_STATE: Final = MetricSpec(
    "aiowt_circuit_breaker_state",
    "gauge",
    ("breaker", "state"),
    "A circuit breaker's state: 1 for the current one (closed, open, half_open), else 0.",
)
BREAKER_TRANSITIONS: Final = MetricSpec(
    "aiowt_circuit_breaker_transitions_total",
    "counter",
    ("breaker", "to"),
    "Circuit breaker state changes, by the state changed to.",
)
BREAKER_FAILURES: Final = MetricSpec(
    "aiowt_circuit_breaker_failures",
    "gauge",
    ("breaker",),
    "Failures inside a closed breaker's window, as of its last change.",
)

# --- webhooks -----------------------------------------------------------------------------

WEBHOOK_EVENTS: Final = MetricSpec(
    "aiowt_webhook_events_total",
    "counter",
    ("outcome",),
    "Webhook events by outcome: sent, failed, dropped (queue full).",
)

# --- the backend --------------------------------------------------------------------------

BACKEND_CONNECTED: Final = MetricSpec(
    "aiowt_backend_connected",
    "gauge",
    ("backend",),
    "1 while the shared backend answers, 0 while its failure policy decides instead.",
)
BACKEND_STATE_CHANGES: Final = MetricSpec(
    "aiowt_backend_state_changes_total",
    "counter",
    ("backend", "to"),
    "Changes of the shared backend's state (to connected, or to unreachable).",
)

# --- the workers ------------------------------------------------------------------------

WORKERS: Final = MetricSpec(
    "aiowt_workers",
    "gauge",
    ("state",),
    "Worker processes at this scrape: answered (summed here) or missing (not in the sums).",
)

# --- the collector itself ---------------------------------------------------------------

SERIES_OVERFLOWED: Final = MetricSpec(
    "aiowt_metric_series_overflowed_total",
    "counter",
    ("metric",),
    "Samples folded into a metric's overflow series (its label-set cap was reached).",
)

CATALOGUE: Final[Mapping[str, MetricSpec]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            HANDSHAKES,
            HANDSHAKE_SECONDS,
            REJECTIONS,
            SESSIONS_ACCEPTED,
            SESSIONS_ACTIVE,
            SESSIONS_ACTIVE_PEAK,
            SESSION_SECONDS,
            SESSION_ERRORS,
            DATAGRAMS,
            DATAGRAM_BYTES,
            STREAM_FRAMES,
            STREAM_BYTES,
            STREAMS_OPENED,
            TOKEN_BUCKET_EXCESS,
            STREAMS_REFUSED,
            BREAKER_STATE,
            BREAKER_TRANSITIONS,
            BREAKER_FAILURES,
            WEBHOOK_EVENTS,
            BACKEND_CONNECTED,
            BACKEND_STATE_CHANGES,
            WORKERS,
            SERIES_OVERFLOWED,
        )
    }
)
"""Every metric aiowt reports, by name."""
