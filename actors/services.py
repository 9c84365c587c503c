"""`Services`: the shared actors of one server, started once and handed to the middleware.

A server starts one bundle (or is given one) and hands it to every middleware that
needs a shared service (`aiowt.middleware.UsesServices`): the observers report to its
collector, the limits count in its registries. A ref given to a middleware explicitly
wins over the bundle's. The actors are the in-process ones; a shared backend will
provide the same refs, answering the same messages, so no middleware changes for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from pykka import ActorDeadError, ActorRef

from .metrics import MetricsCollector
from .ratelimit import RateLimitRegistry
from .rooms import LocalRooms, RoomStore
from .sessions import SessionRegistry

__all__ = ["Services"]


@dataclass(frozen=True, slots=True)
class Services:
    """Refs to the shared services of one server."""

    metrics: ActorRef[MetricsCollector]
    """Where every observer, limit and breaker reports (see `aiowt.actors.metric_names`)."""
    rate_limits: ActorRef[RateLimitRegistry]
    """Concurrent sessions per IP, route and path (`RateLimit` and its kin)."""
    sessions: ActorRef[SessionRegistry]
    """The live sessions: lookups and broadcasts."""
    rooms: RoomStore = field(default_factory=LocalRooms)
    """Where rooms run: give it to your `RoomManager` (``rooms=``) to share them with the
    other processes of the backend."""
    support: tuple[ActorRef[Any] | Closable, ...] = ()
    """What the services need (a backend's connections): actors, stopped last, or
    objects with ``aclose()``, closed last."""

    @classmethod
    def start(cls) -> Services:
        """Start the three services on the running event loop."""
        metrics = MetricsCollector.start()
        return cls(metrics, RateLimitRegistry.start(), SessionRegistry.start())

    async def stop(self) -> None:
        """Stop the services, then what supports them (each at most once; a stopped one
        is fine)."""
        await _stop(self.sessions, self.rate_limits, self.metrics)
        await self.rooms.close()
        for item in self.support:
            if isinstance(item, ActorRef):
                await _stop(item)
            else:
                await item.aclose()


class Closable(Protocol):
    async def aclose(self) -> None: ...


async def _stop(*refs: ActorRef[Any]) -> None:
    for ref in refs:
        if ref.is_alive():
            with contextlib.suppress(ActorDeadError):
                await ref.stop(block=False)
