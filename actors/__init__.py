"""aiowt.actors: loop-native pykka actors, the session handler actor, the shared services.

- The runtime: `LoopActor` (a pykka actor that is an asyncio task) and `LoopFuture`.
- `Handler`: the per-session actor users subclass (`run_session` runs one).
- The service kit: `Service` (a supervised actor answering `@handles` messages),
  `Request`, `ask`, `ask_future`, `tell_quietly`, `ServiceHandle`, `UnknownMessage`.
- The shared services, each the one owner of its state: `MetricsCollector`,
  `RateLimitRegistry`, `SessionRegistry`, `Breaker`, `RoomManager`, bundled per server
  as `Services`; and `OutboundChannel`, a session's slow-consumer policy.

Each service's messages are reached through its module (`aiowt.actors.metrics.Inc`,
`aiowt.actors.sessions.Register`, ...); the metrics aiowt reports are listed in
`aiowt.actors.metric_names`.
"""

from aiowt.transport.deprecation import deprecated_names, moved_to

from ._handler import Handler, run_session
from ._runtime import BlockingGetOnLoopError, LoopActor, LoopFuture, NoRunningLoopError
from ._service import (
    Request,
    Service,
    ServiceHandle,
    UnknownMessage,
    ask,
    ask_future,
    handles,
    tell_quietly,
)
from .breaker import Breaker
from .metrics import MetricsCollector
from .outbound import OutboundChannel
from .ratelimit import RateLimitRegistry
from .rooms import RoomManager
from .services import Services
from .sessions import SessionRegistry

__all__ = [
    "BlockingGetOnLoopError",
    "Breaker",
    "Handler",
    "LoopActor",
    "LoopFuture",
    "MetricsCollector",
    "NoRunningLoopError",
    "OutboundChannel",
    "RateLimitRegistry",
    "Request",
    "RoomManager",
    "Service",
    "ServiceHandle",
    "Services",
    "SessionRegistry",
    "UnknownMessage",
    "ask",
    "ask_future",
    "handles",
    "run_session",
    "tell_quietly",
]

# Names this package exported before its surface was narrowed: each still works, from
# the module that defines it, with a DeprecationWarning.
_MOVED = {
    **dict.fromkeys(
        (
            "DEFAULT_BUCKETS", "OVERFLOW_LABELS", "AddGauge", "HistogramValue", "Inc",
            "LabelSet", "MetricFamily", "MetricsSnapshot", "Observe", "SetGauge",
            "TakeSnapshot", "label_set",
        ),
        "aiowt.actors.metrics",
    ),
    **dict.fromkeys(
        (
            "Admission", "Admit", "BreakerState", "BreakerStatus", "GetBreakerStatus",
            "ResetBreaker", "SessionFailed", "SessionNotRun", "SessionSucceeded",
            "validate_breaker_settings",
        ),
        "aiowt.actors.breaker",
    ),
    **dict.fromkeys(
        (
            "Attach", "Broadcast", "BroadcastExcept", "CountSessions", "Delivery",
            "ListSessions", "LookupSession", "Multicast", "Register", "SessionInfo",
            "Unregister",
        ),
        "aiowt.actors.sessions",
    ),
    **dict.fromkeys(
        ("Acquire", "CountHolders", "HolderCounts", "Release"), "aiowt.actors.ratelimit"
    ),
    **dict.fromkeys(
        (
            "DatagramReceived", "SessionClosed", "SessionDraining", "StreamDataReceived",
            "StreamOpened", "StreamReset",
        ),
        "aiowt.transport.events",
    ),
}  # fmt: skip


__getattr__ = deprecated_names(
    __name__,
    {
        "CircuitBreaker": ("aiowt.actors.Breaker", lambda: Breaker),
        **{name: moved_to(module, name) for name, module in _MOVED.items()},
    },
)
