"""`RedisBridge`: one pub/sub connection per process for the services on Redis.

A service subscribes to a channel with its actor (`Subscribe`: a room with members
here, the session registry to its process's channel) and is told what is published on
it (`Published`, the raw message). When Redis goes away the bridge reconnects with
backoff and jitter, subscribes again and tells each subscriber to catch up (`Resync`);
every third of a lease it tells each subscriber to renew what it holds (`Renew`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from pykka import ActorRef

from ._redis import UNREACHABLE, Redis, backoff
from ._service import Request, Service, handles

__all__ = ["Published", "RedisBridge", "Renew", "Resync", "Subscribe", "Unsubscribe"]

log = structlog.get_logger("aiowt.backend")


@dataclass(frozen=True, slots=True)
class Published:
    """A message published on a channel the receiver subscribed to."""

    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Resync:
    """The bridge reconnected: write back what you hold (Redis may have restarted
    empty) and catch up with what was published meanwhile."""


@dataclass(frozen=True, slots=True)
class Renew:
    """Every third of a lease: renew the leases of what you hold."""


@dataclass(frozen=True, slots=True)
class Subscribe(Request[None]):
    """Tell `receiver` what is published on `channel`; replies once Redis confirmed it
    (so everything published after the reply arrives)."""

    channel: str
    receiver: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Unsubscribe(Request[None]):
    """Stop telling what is published on `channel`."""

    channel: str


class RedisBridge(Service):
    """One per process: the pub/sub connection of the services on Redis (see the module)."""

    def __init__(self, client: Redis, *, lease: float, max_backoff: float = 5.0) -> None:
        super().__init__()
        self._client = client
        self._lease = lease
        self._max_backoff = max_backoff
        self._receivers: dict[str, ActorRef[Any]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._listening = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<RedisBridge channels={len(self._receivers)}>"

    async def on_start(self) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._keeper = loop.create_task(self._keep())

    async def on_stop(self) -> None:  # type: ignore[override]
        for task in (self._reader, self._keeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._client.aclose()

    @handles(Subscribe)
    async def _subscribe(self, message: Subscribe) -> None:
        self._receivers[message.channel] = message.receiver
        await self._listen(message.channel)

    @handles(Unsubscribe)
    async def _unsubscribe(self, message: Unsubscribe) -> None:
        self._receivers.pop(message.channel, None)
        self._confirmed.pop(message.channel, None)
        if self._pubsub is not None:
            with contextlib.suppress(*UNREACHABLE):
                await self._pubsub.unsubscribe(message.channel)

    async def _listen(self, channel: str) -> None:
        """Subscribe and wait for Redis to confirm (events after it all arrive)."""
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()
        confirmed = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        try:
            await self._pubsub.subscribe(channel)
            self._listening.set()
            async with asyncio.timeout(5):
                await confirmed
        except UNREACHABLE:
            log.warning("subscription failed; waiting for redis", channel=channel)

    async def _read(self) -> None:
        failures = 0
        while True:
            pubsub = self._pubsub
            if pubsub is None or not pubsub.subscribed:
                self._listening.clear()
                await self._listening.wait()
                continue
            try:
                message = await pubsub.get_message(timeout=1.0)
            except UNREACHABLE as error:
                failures += 1
                await self._reconnect(failures, error)
                continue
            failures = 0
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: Mapping[str, Any]) -> None:
        channel = _text(message.get("channel"))
        kind = message.get("type")
        if kind == "subscribe":
            waiter = self._confirmed.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if kind != "message":
            return
        receiver = self._receivers.get(channel)
        if receiver is not None:
            with contextlib.suppress(Exception):  # stopped meanwhile: it unsubscribes
                receiver.tell(Published(channel, message["data"]))

    async def _reconnect(self, failures: int, error: BaseException) -> None:
        log.warning("redis channels lost; reconnecting", error=repr(error), attempt=failures)
        await asyncio.sleep(backoff(failures, self._max_backoff))
        old, self._pubsub = self._pubsub, self._client.pubsub()
        with contextlib.suppress(Exception):
            await old.aclose()
        for channel in list(self._receivers):
            self._confirmed.pop(channel, None)
            try:
                await self._pubsub.subscribe(channel)
            except UNREACHABLE:
                return
        self._tell_each(Resync())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            self._tell_each(Renew())

    def _tell_each(self, message: Resync | Renew) -> None:
        """Once to each receiver, however many channels it listens to."""
        receivers = {ref.actor_urn: ref for ref in self._receivers.values()}
        for receiver in receivers.values():
            with contextlib.suppress(Exception):
                receiver.tell(message)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
