"""Rooms across processes: one total order per room, kept in Redis.

Each process keeps a `SharedRoom` actor for each room that has members on it, and fans
out to them exactly as an in-process `Room` does (the same deliveries, the same frames;
the slow-consumer policy is the members' own). What is shared lives in Redis, under the
backend's prefix:

- a room's events are numbered by one counter and kept in a capped stream (the log, for
  members that must catch up) and its messages in a shorter one (the history, for late
  joiners); every event is published on the room's channel;
- a post, a join, a leave is one script: next number, append, publish; so every member
  in the cluster sees one total order per room;
- presence (who is in the room) is a hash beside leases: a process that dies leaves its
  members behind for at most one lease, then whoever touches the room next announces
  them gone (``leave`` with reason ``"gone"``).

One `RedisBridge` per process holds the pub/sub connection: it subscribes to the
channels of the rooms with members here, and tells each room what is published. A room
that sees a gap in the numbering fetches what it missed from the log before going on.

While Redis is unreachable a room goes on with the members of this process only: their
posts reach each other, numbered 0 (outside the room's order) and not stored; once
Redis is back the room writes its members' presence back and catches up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgpack
import structlog
from pykka import ActorRef

from aiowt.transport.framing import DEFAULT_MAX_MESSAGE_SIZE, encode_frame, encode_message

from ._redis import UNREACHABLE, Batcher, Redis, batcher_for
from ._service import handles
from .redis_bridge import Published, RedisBridge, Renew, Resync, Subscribe, Unsubscribe
from .room_scripts import JOIN, LEAVE, PARTS, POST, RANGE, RENEW
from .rooms import (
    Clock,
    GetHistory,
    GetMembers,
    JoinRefused,
    Member,
    MemberInfo,
    MemberJoined,
    MemberLeft,
    MessagePosted,
    NameTaken,
    Post,
    Room,
    RoomEvent,
    RoomEventDelivered,
    RoomSignalDelivered,
    RoomSnapshot,
    Signal,
    SignalRelayed,
    _AddMember,
    _RemoveMember,
)

__all__ = ["RedisRooms", "SharedRoom"]

log = structlog.get_logger("aiowt.rooms")


class SharedRoom(Room):
    """A room whose order, history and presence are in Redis; its members here are local.

    Answers the same messages as `Room` and delivers the same things to its members.
    Started by a `RoomManager` on this backend (`RedisRooms`).
    """

    def __init__(
        self,
        name: str,
        *,
        rooms: RedisRooms,
        manager: ActorRef[Any] | None = None,
        history_size: int = 50,
        max_frame_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(
            name,
            manager=manager,
            history_size=history_size,
            max_frame_size=max_frame_size,
            clock=clock,
        )
        self._shared_rooms = rooms
        self._history_size = history_size
        self._channel = rooms.key(name, "events")
        self._keys = [rooms.key(name, part) for part in PARTS]
        self._since: dict[str, int] = {}
        """Member id -> the number of its join: it gets that event and the later ones."""
        self._last = 0
        """The number of the last event delivered here."""
        self._shared = True
        """False while Redis is unreachable: the members here only talk to each other."""
        self._epoch: str | None = None
        """When the room's order began, as Redis says; a new one means a new order."""

    def __repr__(self) -> str:
        return f"<SharedRoom {self.name!r} members={len(self._members)} last={self._last}>"

    async def on_start(self) -> None:  # type: ignore[override]
        try:
            await self._shared_rooms.bridge.ask(
                Subscribe(self._channel, self.actor_ref), block=False
            )
        except Exception as error:
            self._lost(error)

    async def on_stop(self) -> None:  # type: ignore[override]
        with contextlib.suppress(Exception):
            self._shared_rooms.bridge.tell(Unsubscribe(self._channel))

    # -- membership --------------------------------------------------------------------------

    @handles(_AddMember)
    async def _shared_add(self, message: _AddMember) -> None:
        member = message.member
        if member.id in self._members:
            return
        joined = _pack(
            {
                "type": "join",
                "room": self.name,
                "time": self._clock(),
                "id": member.id,
                "name": member.name,
            }
        )
        if self._shared:
            try:
                reply = await self._script(
                    self._shared_rooms.join,
                    [
                        member.id,
                        self._info(member),
                        joined,
                        "1" if message.unique_name else "0",
                        member.name,
                    ],
                )
            except UNREACHABLE as error:
                self._lost(error)
            else:
                if int(reply[0]) < 0:
                    reason = str(NameTaken(self.name, member.name))
                    member.ref.tell(JoinRefused(self.name, member.info, reason))
                    return
                seq, present, stored, epoch = reply
                if self._follow(epoch):
                    await self._catch_up(int(seq) - 1)
                others = tuple(m for m in _members(present) if m.id != member.id)
                history = _messages(stored)
                self._admit(member, (*others, member.info), history, int(seq))
                return
        self._admit(member, (*(m.info for m in self._members.values()), member.info), (), 0)
        self._fan_out(MemberJoined(self.name, member.info, 0, self._clock()))

    @handles(_RemoveMember)
    async def _shared_remove(self, message: _RemoveMember) -> None:
        member = self._members.pop(message.member_id, None)
        self._gone.discard(message.member_id)
        self._since.pop(message.member_id, None)
        if member is None:
            return
        left = _pack(
            {
                "type": "leave",
                "room": self.name,
                "time": self._clock(),
                "id": member.id,
                "name": member.name,
                "reason": message.reason,
            }
        )
        if self._shared:
            try:
                await self._script(self._shared_rooms.leave, [member.id, left])
                return
            except UNREACHABLE as error:
                self._lost(error)
        self._fan_out(MemberLeft(self.name, member.info, 0, self._clock(), message.reason))

    # -- traffic -----------------------------------------------------------------------------

    @handles(Post)
    async def _shared_post(self, message: Post) -> int | None:
        posted = self._posted(message, 0)  # numbered by Redis, or 0 outside the order
        if posted is None:
            return None
        event, frame = posted
        if self._shared:
            try:
                seq = await self._script(
                    self._shared_rooms.post, [event.sender.id, _pack(event.to_wire())]
                )
            except UNREACHABLE as error:
                self._lost(error)
            else:
                return int(seq) or None
        self._send_all(RoomEventDelivered(event, frame))
        return 0

    @handles(Signal)
    async def _shared_signal(self, message: Signal) -> int:
        event = self._signalled(message)
        if event is None:
            return 0
        if self._shared:
            blob = _pack({**event.to_wire(), _SIGNAL: True})
            try:
                async with asyncio.timeout(self._shared_rooms.timeout):
                    pipe = self._shared_rooms.client.pipeline(transaction=False)
                    pipe.publish(self._channel, b"0 " + blob)
                    pipe.hlen(self._keys[3])
                    _, members = await pipe.execute()
            except UNREACHABLE as error:
                self._lost(error)
            else:
                return max(0, int(members) - 1)  # every other member, on any process
        return self._relay(event)

    @handles(GetMembers)
    async def _shared_members(self, message: GetMembers) -> tuple[MemberInfo, ...]:
        if not self._shared:
            return tuple(m.info for m in self._members.values())
        present = await self._shared_rooms.client.hgetall(self._keys[3])
        return _members([x for pair in present.items() for x in pair])

    @handles(GetHistory)
    async def _shared_history(self, message: GetHistory) -> tuple[MessagePosted, ...]:
        if not self._shared:
            return ()
        entries = await self._shared_rooms.client.xrange(self._keys[2], "-", "+") or []
        return _messages([[entry_id, [b"e", (fields or {})[b"e"]]] for entry_id, fields in entries])

    # -- what the bridge brings ----------------------------------------------------------------

    @handles(Published)
    async def _published(self, message: Published) -> None:
        # "<seq> <msgpack event>", seq 0 for a signal (outside the order).
        head, _, blob = message.data.partition(b" ")
        try:
            seq, event = int(head), msgpack.unpackb(blob)
            if not isinstance(event, dict):
                raise ValueError("not a map")
        except (ValueError, msgpack.UnpackException):
            log.warning("not a room event; ignored", room=self.name, data=message.data[:80])
            return
        if seq == 0:
            signal = _signal(event)
            if signal is not None:
                self._relay(signal)
            return
        if seq <= self._last:
            return  # delivered already (caught up from the log before it arrived)
        if seq > self._last + 1:
            await self._catch_up(seq - 1)
        self._deliver_numbered(seq, event)

    @handles(Resync)
    async def _resync(self, message: Resync) -> None:
        await self._sync()

    @handles(Renew)
    async def _renew(self, message: Renew) -> None:
        await self._sync()

    # -- helpers -------------------------------------------------------------------------------

    def _admit(
        self,
        member: Member,
        members: tuple[MemberInfo, ...],
        history: tuple[MessagePosted, ...],
        seq: int,
    ) -> None:
        # Built before the member is added: if it cannot be encoded, nothing changed here.
        frame = self._snapshot_frame(member, members, history)
        self._members[member.id] = member
        self._since[member.id] = seq
        if seq and not self._last:
            self._last = seq - 1
        self._deliver(member, RoomSnapshot(self.name, member.info, members, history, frame))

    async def _catch_up(self, through: int) -> None:
        """Deliver the events after the last one delivered, through `through`, from the log."""
        if through <= self._last:
            return
        try:
            entries = await self._script(self._shared_rooms.range, [self._last + 1, through])
        except UNREACHABLE as error:
            self._lost(error)
            return
        for entry_id, fields in entries:
            seq = _number(entry_id)
            if seq > self._last:
                self._deliver_numbered(seq, msgpack.unpackb(fields[1]))
        if self._last < through:
            log.warning(
                "room events gone from the log before this process caught up",
                room=self.name,
                missed=through - self._last,
            )
            self._last = through

    def _deliver_numbered(self, seq: int, wire: Mapping[str, Any]) -> None:
        self._last = seq
        event = _event(seq, wire)
        if event is None:
            return
        delivery = RoomEventDelivered(
            event, encode_frame(event.to_wire(), max_size=self._max_frame_size)
        )
        for member in tuple(self._members.values()):
            if self._since.get(member.id, seq + 1) <= seq:
                self._deliver(member, delivery)

    async def _sync(self) -> None:
        """Renew this process's members' presence (writing it back after an outage) and
        deliver whatever the room's order holds that was not delivered here yet."""
        pairs: list[object] = []
        for member in self._members.values():
            pairs += [member.id, self._info(member)]
        try:
            epoch, latest = await self._script(self._shared_rooms.renew, pairs)
        except UNREACHABLE as error:
            self._lost(error)
            return
        if not self._shared:
            self._shared = True
            log.info("redis reachable again; the room is shared again", room=self.name)
        self._follow(epoch)
        await self._catch_up(int(latest))

    def _follow(self, epoch: object) -> bool:
        """Note the room's epoch; True if its order restarted (Redis came back without
        the room): the members here take the new order from its first event."""
        epoch = _text(epoch)
        restarted = self._epoch is not None and epoch != self._epoch
        if restarted:
            log.warning("room order restarted", room=self.name, was=self._last)
            self._last = 0
            self._since = dict.fromkeys(self._since, 0)
        self._epoch = epoch
        return restarted

    def _lost(self, error: BaseException) -> None:
        if self._shared:
            self._shared = False
            log.warning(
                "redis unreachable; the room goes on with this process's members",
                room=self.name,
                error=repr(error),
            )

    def _fan_out(self, event: RoomEvent) -> None:
        frame = encode_frame(event.to_wire(), max_size=self._max_frame_size)
        self._send_all(RoomEventDelivered(event, frame))

    def _relay(self, event: SignalRelayed) -> int:
        delivery = RoomSignalDelivered(event, encode_message(event.to_wire()))
        return self._send_all(delivery, skip=event.sender.id)

    def _info(self, member: Member) -> bytes:
        return _pack({"id": member.id, "name": member.name, "at": self._clock()})

    async def _script(self, script: Any, args: list[object]) -> Any:
        rooms = self._shared_rooms
        now = 0 if rooms.clock is None else rooms.clock()
        base = [now, int(rooms.lease * 1000), self._channel, self.name, rooms.log_size]
        async with asyncio.timeout(rooms.timeout):
            return await script(keys=self._keys, args=[*base, self._history_size, *args])


_SIGNAL = "_signal"
_STAMPS = frozenset({"type", "room", "seq", "time", "from", "id"})


def _pack(value: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(dict(value))
    return packed


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(entry_id: object) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _members(flat: list[Any]) -> tuple[MemberInfo, ...]:
    infos = [msgpack.unpackb(flat[i + 1]) for i in range(0, len(flat), 2)]
    infos.sort(key=lambda info: info.get("at", 0))
    return tuple(MemberInfo(str(info["id"]), str(info["name"])) for info in infos)


def _messages(entries: list[Any]) -> tuple[MessagePosted, ...]:
    events = (_event(_number(entry_id), msgpack.unpackb(fields[1])) for entry_id, fields in entries)
    return tuple(event for event in events if isinstance(event, MessagePosted))


def _event(seq: int, wire: Mapping[str, Any]) -> RoomEvent | None:
    kind = wire.get("type")
    when = float(wire.get("time", 0.0))
    room = str(wire.get("room", ""))
    if kind == "join":
        return MemberJoined(room, MemberInfo(str(wire["id"]), str(wire["name"])), seq, when)
    if kind == "leave":
        who = MemberInfo(str(wire["id"]), str(wire["name"]))
        return MemberLeft(room, who, seq, when, str(wire.get("reason", "left")))
    if kind == "message":
        sender = MemberInfo(str(wire["id"]), str(wire["from"]))
        fields = {k: v for k, v in wire.items() if k not in _STAMPS}
        return MessagePosted(room, sender, MappingProxyType(fields), seq, when)
    return None


def _signal(wire: Mapping[str, Any]) -> SignalRelayed | None:
    if not wire.get(_SIGNAL):
        return None
    sender = MemberInfo(str(wire["id"]), str(wire["from"]))
    fields = {k: v for k, v in wire.items() if k not in _STAMPS and k != _SIGNAL}
    return SignalRelayed(
        str(wire["room"]), sender, str(wire["type"]), MappingProxyType(fields), float(wire["time"])
    )


class RedisRooms:
    """What a `RoomManager` on the Redis backend starts its rooms with: a client, the
    process's `RedisBridge`, and the backend's prefix, lease and timeout. The bridge is
    the backend's; `close()` leaves it running."""

    def __init__(
        self,
        client: Redis,
        bridge: ActorRef[RedisBridge],
        *,
        prefix: str,
        lease: float,
        timeout: float,
        log_size: int = 1000,
        clock: Callable[[], int] | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        self.client = client
        self.batcher, self._own_batcher = batcher_for(client, batcher)
        """Sends the scripts (the backend's, shared; or the store's own)."""
        self.clock = clock
        """Milliseconds for the scripts instead of Redis' clock (tests move it by hand)."""
        self.bridge = bridge
        self.prefix = prefix
        self.lease = lease
        self.timeout = timeout
        self.log_size = log_size
        """How many events a room's log keeps for members that must catch up."""
        self.join = self.batcher.register_script(JOIN)
        self.post = self.batcher.register_script(POST)
        self.leave = self.batcher.register_script(LEAVE)
        self.renew = self.batcher.register_script(RENEW)
        self.range = self.batcher.register_script(RANGE)

    def key(self, room: str, part: str) -> str:
        # One hash tag per room: its keys share a cluster slot (the scripts need that),
        # and different rooms spread over the cluster.
        return f"{{{self.prefix}:room:{room}}}:{part}"

    def start(
        self,
        name: str,
        *,
        manager: ActorRef[Any],
        history_size: int,
        max_frame_size: int,
        clock: Clock,
    ) -> ActorRef[Room]:
        """Start the room `name` of this process (a `SharedRoom`)."""
        ref: ActorRef[Any] = SharedRoom.start(
            name,
            rooms=self,
            manager=manager,
            history_size=history_size,
            max_frame_size=max_frame_size,
            clock=clock,
        )
        return ref

    async def close(self) -> None:
        """Close the connection, if it is the store's own (the manager stopped its rooms)."""
        if self._own_batcher:
            await self.batcher.aclose()
