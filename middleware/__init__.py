"""aiowt.middleware: the middleware contract and the catalogue.

A middleware is an async callable ``(ctx, call_next)`` (`Middleware`); the configurable
ones below are small classes, validated when made. The contract, with its optional
parts (`UsesServices`, `Closable`), is in `aiowt.middleware.chain`; the ready-made
stacks in `aiowt.middleware.stacks`. Everything else stays in its module: typed context
keys (`aiowt.middleware.keys`), the session record observers share
(`aiowt.middleware.record`), access-log formats (`aiowt.middleware.access_format`),
helpers of each middleware.
"""

from aiowt.transport.deprecation import deprecated_names, moved_to

from . import stacks
from .auth import BasicAuth, BearerAuth, QueryAuth, RequireKey, StaticTokens
from .chain import CallNext, Chain, Closable, Middleware, UsesServices, build_chain
from .compress import Compress
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
from .request_id import RequestID
from .resilience import CircuitBreaker, IdleTimeout, Recover, SessionTimeoutWithWarning, Timeout
from .stats import Bandwidth, ConcurrencyStats
from .status import Status
from .subprotocols import Subprotocols
from .timing import Recorder, Timer
from .tracing import AdaptiveSampler, FixedSampler, OTelTracing, Tracing
from .webhook import Webhook

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
    "ConcurrencyStats",
    "DepthGuard",
    "ErrorHandler",
    "ExtractHeader",
    "ExtractHeaders",
    "FixedSampler",
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
    "SessionTimeoutWithWarning",
    "StaticTokens",
    "Status",
    "Subprotocols",
    "Timeout",
    "Timer",
    "TokenBucket",
    "Tracing",
    "UsesServices",
    "Webhook",
    "build_chain",
    "stacks",
]

# Names this package exported before its surface was narrowed, or under another name:
# each still works, with a DeprecationWarning.
_MOVED = {
    "Compressor": "aiowt.middleware.compress",
    "HealthCheck": "aiowt.middleware.status",
    "SessionRecord": "aiowt.middleware.record",
    "TraceContext": "aiowt.middleware.tracing",
    "WebhookEvent": "aiowt.middleware.webhook",
    "middleware_name": "aiowt.middleware.chain",
    "secrets_equal": "aiowt.middleware.auth",
}


__getattr__ = deprecated_names(
    __name__,
    {
        "DefaultLogger": ("aiowt.middleware.Logger (the same middleware)", lambda: Logger),
        **{name: moved_to(module, name) for name, module in _MOVED.items()},
    },
)
