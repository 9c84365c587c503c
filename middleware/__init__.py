"""aiowt.middleware: the chain and the catalogue.

A middleware is an async callable `(ctx, call_next)`; the configurable ones below are
small classes. Constants (metric names, typed context keys) stay in their modules:
`aiowt.middleware.keys`, `.timing`, `.limits`, `.metrics`, ...
"""

from . import stacks
from .auth import BasicAuth, BearerAuth, QueryAuth, RequireKey, StaticTokens, secrets_equal
from .chain import (
    CallNext,
    Chain,
    Closable,
    Middleware,
    UsesServices,
    build_chain,
    middleware_name,
)
from .compress import Compress, Compressor
from .control import ErrorHandler, If
from .extract import ExtractHeader, ExtractHeaders, SessionData
from .headers import PoweredBy, RequireHeader
from .limits import (
    DepthGuard,
    MaxSessions,
    PerPathRateLimit,
    RateLimit,
    RouteRateLimit,
    TokenBucket,
)
from .logging import AccessLog, JsonAccessLog, LogContext, Logger
from .metrics import Metrics, PrometheusMetrics
from .network import CORS, BlockUserAgent, ClientIP, IPAllowList, IPBlockList, RequireUserAgent
from .record import SessionRecord
from .request_id import RequestID
from .resilience import CircuitBreaker, IdleTimeout, Recover, SessionTimeoutWithWarning, Timeout
from .stats import Bandwidth, ConcurrencyStats
from .status import HealthCheck, Status
from .subprotocols import Subprotocols
from .timing import Recorder, Timer
from .tracing import AdaptiveSampler, FixedSampler, OTelTracing, TraceContext, Tracing
from .webhook import Webhook, WebhookEvent

__all__ = [
    "CORS",
    "AccessLog",
    "AdaptiveSampler",
    "Bandwidth",
    "BasicAuth",
    "BearerAuth",
    "BlockUserAgent",
    "CallNext",
    "Chain",
    "CircuitBreaker",
    "ClientIP",
    "Closable",
    "Compress",
    "Compressor",
    "ConcurrencyStats",
    "DepthGuard",
    "ErrorHandler",
    "ExtractHeader",
    "ExtractHeaders",
    "FixedSampler",
    "HealthCheck",
    "IPAllowList",
    "IPBlockList",
    "IdleTimeout",
    "If",
    "JsonAccessLog",
    "LogContext",
    "Logger",
    "MaxSessions",
    "Metrics",
    "Middleware",
    "OTelTracing",
    "PerPathRateLimit",
    "PoweredBy",
    "PrometheusMetrics",
    "QueryAuth",
    "RateLimit",
    "Recorder",
    "Recover",
    "RequestID",
    "RequireHeader",
    "RequireKey",
    "RequireUserAgent",
    "RouteRateLimit",
    "SessionData",
    "SessionRecord",
    "SessionTimeoutWithWarning",
    "StaticTokens",
    "Status",
    "Subprotocols",
    "Timeout",
    "Timer",
    "TokenBucket",
    "TraceContext",
    "Tracing",
    "UsesServices",
    "Webhook",
    "WebhookEvent",
    "build_chain",
    "middleware_name",
    "secrets_equal",
    "stacks",
]
