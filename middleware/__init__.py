"""aiowt.middleware: the chain and the catalogue.

A middleware is an async callable `(ctx, call_next)`; the configurable ones below are
small classes. Constants (metric names, typed context keys) stay in their modules:
`aiowt.middleware.keys`, `.timing`, `.limits`, `.metrics`, ...
"""

from . import stacks
from .auth import BasicAuth, BearerAuth, QueryAuth, RequireKey, StaticTokens, secrets_equal
from .chain import CallNext, Chain, Closable, Middleware, build_chain, middleware_name
from .compress import Compress, Compressor
from .limits import (
    DepthGuard,
    MaxSessions,
    PerPathRateLimit,
    RateLimit,
    RouteRateLimit,
    TokenBucket,
)
from .logging import AccessLog, DefaultLogger, JsonAccessLog, LogContext, Logger
from .metrics import Metrics, PrometheusMetrics
from .network import CORS, BlockUserAgent, ClientIP, IPAllowList, IPBlockList, RequireUserAgent
from .request import (
    ErrorHandler,
    ExtractHeader,
    ExtractHeaders,
    If,
    PoweredBy,
    RequestID,
    RequireHeader,
    SessionData,
    Subprotocols,
)
from .resilience import CircuitBreaker, IdleTimeout, Recover, SessionTimeoutWithWarning, Timeout
from .stats import Bandwidth, ConcurrencyStats
from .status import HealthCheck, Status
from .timing import Recorder, SessionRecord, Timer
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
    "DefaultLogger",
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
    "Webhook",
    "WebhookEvent",
    "build_chain",
    "middleware_name",
    "secrets_equal",
    "stacks",
]
