"""One pub/sub connection per process for the shared rooms with members on it.

The bridge subscribes to the channel of each room that has members here and tells the
room what is published on it (`Published`). When Redis goes away it reconnects with
backoff and jitter, subscribes again and tells each room to catch up (`Resync`); every
third of a lease it tells each room to renew its members' presence (`Renew`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog
from pykka import ActorRef

from ._redis import UNREACHABLE, Redis, backoff
from ._service import Request, Service, handles

__all__ = ["Published", "Renew", "Resync", "RoomBridge", "Subscribe", "Unsubscribe"]

log = structlog.get_logger("aiowt.rooms")


@dataclass(frozen=True, slots=True)
class Published:
    """What the bridge read on a room's channel: an event (seq > 0) or a signal (seq 0)."""

    seq: int
    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Resync:
    """The bridge reconnected: catch up from the log and write presence back."""


@dataclass(frozen=True, slots=True)
class Renew:
    """The keeper's tick: renew this process's members' presence."""


@dataclass(frozen=True, slots=True)
class Subscribe(Request[None]):
    """Deliver what is published on `channel` to `room`; replies once subscribed."""

    channel: str
    room: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Unsubscribe(Request[None]):
    """Stop delivering `channel` (the room has no members here any more)."""

    channel: str


class RoomBridge(Service):
    """One per process: the pub/sub connection of the rooms with members here.

    Reconnects with backoff and jitter when Redis goes away, subscribes again, and tells
    each room to catch up. Every third of a lease it tells each room to renew its
    members' presence.
    """

    def __init__(self, client: Redis, *, lease: float, max_backoff: float = 5.0) -> None:
        super().__init__()
        self._client = client
        self._lease = lease
        self._max_backoff = max_backoff
        self._rooms: dict[str, ActorRef[Any]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._listening = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<RoomBridge rooms={len(self._rooms)}>"

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
        self._rooms[message.channel] = message.room
        await self._listen(message.channel)

    @handles(Unsubscribe)
    async def _unsubscribe(self, message: Unsubscribe) -> None:
        self._rooms.pop(message.channel, None)
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
            log.warning("room subscription failed; the room is local-only", channel=channel)

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
        room = self._rooms.get(channel)
        if room is None:
            return
        data = message["data"]
        seq, _, blob = data.partition(b" ")
        with contextlib.suppress(Exception):  # a stopped room, or garbage on the channel
            room.tell(Published(int(seq), msgpack.unpackb(blob)))

    async def _reconnect(self, failures: int, error: BaseException) -> None:
        log.warning("room channels lost; reconnecting", error=repr(error), attempt=failures)
        await asyncio.sleep(backoff(failures, self._max_backoff))
        old, self._pubsub = self._pubsub, self._client.pubsub()
        with contextlib.suppress(Exception):
            await old.aclose()
        for channel in list(self._rooms):
            self._confirmed.pop(channel, None)
            try:
                await self._pubsub.subscribe(channel)
            except UNREACHABLE:
                return
        for room in list(self._rooms.values()):
            with contextlib.suppress(Exception):
                room.tell(Resync())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            for room in list(self._rooms.values()):
                with contextlib.suppress(Exception):
                    room.tell(Renew())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
