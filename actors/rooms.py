"""Rooms: named groups of member actors that broadcast to each other, built as actors.

Two kinds of actor share the work, each the single owner of its state:

- `RoomManager` (one per application) owns the room table: which rooms exist and who
  is in each. Joins and leaves go through it, so it alone decides when a room is
  created (first join) and removed (last leave); a join that races a room's removal
  simply creates a fresh room.
- `Room` (one per live room) owns the members' refs, the event numbering (`seq`) and
  the history of the last N messages. Members post to it directly (`Post`, `Signal`),
  with the ref `JoinRoom` replies with.

A member is any actor (usually a session's `Handler`); the room reaches it only by
`tell`. Broadcasting is therefore a loop of non-blocking tells: nothing in a room ever
awaits a member, so a member whose peer cannot keep up slows nobody else. What a member
does with a delivery is its own business; a session handler writes the ready-made
frame on its own transport through `aiowt.actors.outbound.OutboundChannel`, whose
policy (bounded buffer, close a slow consumer, drop datagrams) keeps one stalled peer
from costing more than its own bounded buffer.

What a member receives, in this order, over its life in a room:

1. `RoomSnapshot`: who is there (itself included) and the history, once, before
   anything else from that room.
2. `RoomEventDelivered` for every `MemberJoined` (its own first), `MemberLeft` and
   `MessagePosted` while it is a member, in the room's `seq` order, each exactly once.
3. `RoomSignalDelivered` for ephemeral signals from other members (not stored, not
   numbered; sent as datagrams by session handlers).

Each delivery carries the event and its msgpack encoding (a length-prefixed stream
frame, or a datagram payload), encoded once per event by the room, not once per member.
Wire shapes are in `docs/rooms.md`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import structlog
from pykka import ActorDeadError, ActorRef

from aiowt.transport.errors import UsageError
from aiowt.transport.framing import DEFAULT_MAX_MESSAGE_SIZE, encode_frame, encode_message

from ._service import Request, Service, handles, tell_quietly

__all__ = [
    "FindRoom",
    "LocalRooms",
    "RoomStore",
    "GetHistory",
    "GetMembers",
    "JoinRoom",
    "LeaveRoom",
    "ListRooms",
    "Member",
    "MemberInfo",
    "MemberJoined",
    "MemberLeft",
    "MessagePosted",
    "JoinRefused",
    "NameTaken",
    "Post",
    "Room",
    "RoomEvent",
    "RoomEventDelivered",
    "RoomManager",
    "RoomSignalDelivered",
    "RoomSnapshot",
    "Signal",
    "SignalRelayed",
]

log = structlog.get_logger("aiowt.rooms")

Clock = Callable[[], float]

# Keys the room stamps on a posted message; a sender's fields cannot override them.
_STAMPED = frozenset({"type", "room", "seq", "time", "from", "id"})


# --- who is in a room -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A member as the others see it: a unique id (a session id) and a display name."""

    id: str
    name: str

    def to_wire(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True, slots=True)
class Member:
    """A member to join: its public info and the actor that receives the room's deliveries."""

    id: str
    name: str
    ref: ActorRef[Any] = field(repr=False)

    @property
    def info(self) -> MemberInfo:
        return MemberInfo(self.id, self.name)


# --- what happened in a room (events) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """`member` joined `room`; `seq` numbers the room's events from 1."""

    room: str
    member: MemberInfo
    seq: int
    time: float

    def to_wire(self) -> dict[str, Any]:
        return {"type": "join", "room": self.room, "seq": self.seq, "time": self.time} | (
            self.member.to_wire()
        )


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """`member` left `room`; `reason` says how (`"left"`, `"disconnected"`, ...)."""

    room: str
    member: MemberInfo
    seq: int
    time: float
    reason: str

    def to_wire(self) -> dict[str, Any]:
        wire = {"type": "leave", "room": self.room, "seq": self.seq, "time": self.time}
        return wire | self.member.to_wire() | {"reason": self.reason}


@dataclass(frozen=True, slots=True)
class MessagePosted:
    """`sender` posted `fields` (for a chat: `{"text": ...}`) to `room`, stamped by the room."""

    room: str
    sender: MemberInfo
    fields: Mapping[str, Any]
    seq: int
    time: float

    def to_wire(self) -> dict[str, Any]:
        stamps = {
            "type": "message",
            "room": self.room,
            "seq": self.seq,
            "time": self.time,
            "from": self.sender.name,
            "id": self.sender.id,
        }
        return {**self.fields, **stamps}


@dataclass(frozen=True, slots=True)
class SignalRelayed:
    """`sender` signalled `kind` (e.g. `"typing"`) to the others in `room`: not stored."""

    room: str
    sender: MemberInfo
    kind: str
    fields: Mapping[str, Any]
    time: float

    def to_wire(self) -> dict[str, Any]:
        stamps = {
            "type": self.kind,
            "room": self.room,
            "time": self.time,
            "from": self.sender.name,
            "id": self.sender.id,
        }
        return {**self.fields, **stamps}


RoomEvent = MemberJoined | MemberLeft | MessagePosted
"""The numbered events of a room, delivered reliably and in order."""


# --- what members receive (told, never asked) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """The first delivery to a new member: who is there and the last messages.

    `frame` is the stream frame of `{"type": "history", "room", "you", "members",
    "messages"}`; when the whole history does not fit the frame size limit, the oldest
    messages are left out of the frame (never out of `history`).
    """

    room: str
    you: MemberInfo
    members: tuple[MemberInfo, ...]
    history: tuple[MessagePosted, ...]
    frame: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RoomEventDelivered:
    """A numbered room event, with its stream frame (length prefix + msgpack)."""

    event: RoomEvent
    frame: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RoomSignalDelivered:
    """An ephemeral signal from another member, with its datagram payload (msgpack)."""

    event: SignalRelayed
    payload: bytes = field(repr=False)


# --- requests ---------------------------------------------------------------------------------


class NameTaken(Exception):
    """A `JoinRoom` with `unique_name` whose name a live member of the room already has."""

    def __init__(self, room: str, name: str) -> None:
        super().__init__(f"the name {name!r} is taken in room {room!r}")
        self.room = room
        self.name = name


@dataclass(frozen=True, slots=True)
class JoinRefused:
    """Delivered to a member instead of its `RoomSnapshot` when a room shared between
    processes refused the join: with `unique_name`, a member on another process has the
    name (decided in the room's Redis script, so exact across processes too)."""

    room: str
    you: MemberInfo
    reason: str


@dataclass(frozen=True, slots=True)
class JoinRoom(Request["ActorRef[Room]"]):
    """Ask the manager to add `member` to `room` (created on first join).

    Replies with the room's ref, for `Post`, `Signal` and queries. The member's first
    delivery from the room is a `RoomSnapshot`. Joining a room twice with the same id is
    a `UsageError`. With `unique_name`, a join whose name a live member of the room (of
    this manager) already has is refused with `NameTaken`; the manager handles joins one
    at a time, so of simultaneous joins with one name exactly one gets in. A name is free
    again once its holder left (or its actor stopped).
    """

    room: str
    member: Member
    unique_name: bool = False


@dataclass(frozen=True, slots=True)
class LeaveRoom(Request[bool]):
    """Ask (or tell) the manager to remove member `member_id` from `room`.

    Replies False when it was not a member. The room is removed when its last member
    leaves.
    """

    room: str
    member_id: str
    reason: str = "left"


@dataclass(frozen=True, slots=True)
class ListRooms(Request["dict[str, int]"]):
    """Ask the manager for the live rooms and how many members each has."""


@dataclass(frozen=True, slots=True)
class FindRoom(Request["ActorRef[Room] | None"]):
    """Ask the manager for the ref of a live room (None if nobody is in it)."""

    room: str


@dataclass(frozen=True, slots=True)
class Post(Request["int | None"]):
    """A member posts a message: `fields` become part of the broadcast `MessagePosted`.

    Usually told. Asked, replies with the message's `seq`, or None when `sender_id` is not
    a member (the post is dropped). Values in `fields` must be msgpack-able and must not
    be mutated afterwards; keys the room stamps (`type`, `room`, `seq`, `time`, `from`,
    `id`) are overridden.
    """

    sender_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Signal(Request[int]):
    """A member sends an ephemeral signal of `kind` to every other member.

    Not stored and not numbered. Asked, replies with how many members it was relayed to
    (0 when `sender_id` is not a member).
    """

    sender_id: str
    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GetMembers(Request["tuple[MemberInfo, ...]"]):
    """Ask a room for its members, in the order they joined."""


@dataclass(frozen=True, slots=True)
class GetHistory(Request["tuple[MessagePosted, ...]"]):
    """Ask a room for its stored messages, oldest first."""


@dataclass(frozen=True, slots=True)
class _AddMember:
    member: Member
    unique_name: bool = False


@dataclass(frozen=True, slots=True)
class _RemoveMember:
    member_id: str
    reason: str


# --- the room ---------------------------------------------------------------------------------


class Room(Service):
    """One live room: its members, its event numbering and its history.

    Started and stopped by a `RoomManager`, which alone adds and removes members. Messages
    from members: `Post`, `Signal`; queries: `GetMembers`, `GetHistory`.

    A member whose actor has stopped without leaving is skipped from then on and reported
    to the manager, which removes it like any leave (reason `"gone"`).
    """

    def __init__(
        self,
        name: str,
        *,
        manager: ActorRef[Any] | None = None,
        history_size: int = 50,
        max_frame_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Clock = time.time,
    ) -> None:
        super().__init__()
        self.name = name
        self._manager = manager
        self._members: dict[str, Member] = {}
        self._gone: set[str] = set()
        self._history: collections.deque[MessagePosted] = collections.deque(maxlen=history_size)
        self._max_frame_size = max_frame_size
        self._clock = clock
        self._seq = 0
        self.posts_dropped = 0
        """Posts and signals from ids that were not members."""

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={len(self._members)} seq={self._seq}>"

    # -- membership (from the manager) -----------------------------------------------------

    @handles(_AddMember)
    def _add(self, message: _AddMember) -> None:
        member = message.member
        if member.id in self._members:
            return
        members = (*(m.info for m in self._members.values()), member.info)
        history = tuple(self._history)
        # Built before the member is added: if it cannot be encoded, nothing changed.
        frame = self._snapshot_frame(member, members, history)
        self._members[member.id] = member
        # The snapshot goes first: everything the member receives later is newer.
        self._deliver(member, RoomSnapshot(self.name, member.info, members, history, frame))
        self._broadcast(MemberJoined(self.name, member.info, self._next_seq(), self._clock()))

    @handles(_RemoveMember)
    def _remove(self, message: _RemoveMember) -> None:
        member = self._members.pop(message.member_id, None)
        self._gone.discard(message.member_id)
        if member is None:
            return
        self._broadcast(
            MemberLeft(self.name, member.info, self._next_seq(), self._clock(), message.reason)
        )

    # -- traffic (from members) -------------------------------------------------------------

    @handles(Post)
    def _post(self, message: Post) -> int | None:
        posted = self._posted(message, self._seq + 1)
        if posted is None:
            return None
        event, frame = posted
        self._seq += 1
        self._history.append(event)
        self._send_all(RoomEventDelivered(event, frame))
        return event.seq

    @handles(Signal)
    def _signal(self, message: Signal) -> int:
        event = self._signalled(message)
        if event is None:
            return 0
        delivery = RoomSignalDelivered(event, encode_message(event.to_wire()))
        return self._send_all(delivery, skip=event.sender.id)

    def _posted(self, message: Post, seq: int) -> tuple[MessagePosted, bytes] | None:
        """The post as an event numbered `seq` and its frame; None (and counted) if its
        sender is not a member. Encoding comes first: a post that cannot be encoded (too
        large, not msgpack-able) raises here and changes nothing."""
        sender = self._members.get(message.sender_id)
        if sender is None:
            self.posts_dropped += 1
            return None
        fields = MappingProxyType(dict(message.fields))
        event = MessagePosted(self.name, sender.info, fields, seq, self._clock())
        return event, encode_frame(event.to_wire(), max_size=self._max_frame_size)

    def _signalled(self, message: Signal) -> SignalRelayed | None:
        """The signal as an event; None (and counted) if its sender is not a member."""
        sender = self._members.get(message.sender_id)
        if sender is None:
            self.posts_dropped += 1
            return None
        fields = MappingProxyType(dict(message.fields))
        return SignalRelayed(self.name, sender.info, message.kind, fields, self._clock())

    # -- queries ------------------------------------------------------------------------------

    @handles(GetMembers)
    def _get_members(self, message: GetMembers) -> tuple[MemberInfo, ...]:
        return tuple(m.info for m in self._members.values())

    @handles(GetHistory)
    def _get_history(self, message: GetHistory) -> tuple[MessagePosted, ...]:
        return tuple(self._history)

    # -- delivery -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _broadcast(self, event: MemberJoined | MemberLeft) -> None:
        frame = encode_frame(event.to_wire(), max_size=self._max_frame_size)
        self._send_all(RoomEventDelivered(event, frame))

    def _send_all(self, delivery: object, skip: str | None = None) -> int:
        sent = 0
        # A snapshot of the members: `_deliver` may mark one gone while we iterate.
        for member in tuple(self._members.values()):
            if member.id != skip and self._deliver(member, delivery):
                sent += 1
        return sent

    def _deliver(self, member: Member, delivery: object) -> bool:
        if member.id in self._gone:
            return False
        try:
            member.ref.tell(delivery)
        except ActorDeadError:
            self._gone.add(member.id)
            log.info("room member stopped without leaving", room=self.name, member=member.id)
            if self._manager is None or not tell_quietly(
                self._manager, LeaveRoom(self.name, member.id, "gone")
            ):
                # No manager to go through (a room used on its own): remove it here.
                self._remove(_RemoveMember(member.id, "gone"))
            return False
        return True

    def _snapshot_frame(
        self,
        member: Member,
        members: tuple[MemberInfo, ...],
        history: tuple[MessagePosted, ...],
    ) -> bytes:
        messages = [event.to_wire() for event in history]
        wire = {
            "type": "history",
            "room": self.name,
            "you": member.info.to_wire(),
            "members": [m.to_wire() for m in members],
            "messages": messages,
        }
        while True:
            try:
                return encode_frame(wire, max_size=self._max_frame_size)
            except UsageError:
                # Over the frame size limit (each message alone was encodable).
                if not messages:
                    raise
                # Keep the newest half: the late joiner wants the latest context.
                del messages[: max(1, len(messages) // 2)]


# --- where rooms run -------------------------------------------------------------------------


class RoomStore(Protocol):
    """How a `RoomManager` starts its rooms: in-process `Room`s (`LocalRooms`), or rooms
    whose order and presence are shared by several processes (the Redis backend's)."""

    def start(
        self,
        name: str,
        *,
        manager: ActorRef[Any],
        history_size: int,
        max_frame_size: int,
        clock: Clock,
    ) -> ActorRef[Room]:
        """Start the room `name` of this process."""

    async def close(self) -> None:
        """Let go of what the store holds (its rooms are stopped by their managers)."""


class LocalRooms:
    """Rooms in this process only: each a `Room` actor."""

    def __repr__(self) -> str:
        return "LocalRooms()"

    def start(
        self,
        name: str,
        *,
        manager: ActorRef[Any],
        history_size: int,
        max_frame_size: int,
        clock: Clock,
    ) -> ActorRef[Room]:
        return Room.start(
            name,
            manager=manager,
            history_size=history_size,
            max_frame_size=max_frame_size,
            clock=clock,
        )

    async def close(self) -> None:
        pass


# --- the manager ------------------------------------------------------------------------------


class _RoomEntry:
    __slots__ = ("members", "ref")

    def __init__(self, ref: ActorRef[Room]) -> None:
        self.ref = ref
        self.members: dict[str, Member] = {}

    def holds(self, name: str) -> bool:
        """Whether a live member has `name`: one whose actor stopped is leaving already
        (its `LeaveRoom` is on its way), so its name is free."""
        return any(m.name == name and m.ref.is_alive() for m in self.members.values())


class RoomManager(Service):
    """The room table: creates a `Room` actor on a room's first join, removes it on its last leave.

    Messages: `JoinRoom`, `LeaveRoom`, `ListRooms`, `FindRoom`. Membership changes are
    forwarded to the room in the order the manager handles them, so the room's view
    follows the manager's exactly. Stopping the manager stops every room.

    Args:
        history_size: how many messages each room keeps for late joiners.
        max_frame_size: the size limit of the frames rooms encode (keep it at most the
            sessions' `max_message_size`).
        clock: the time source of event stamps (`time.time`).
        rooms: where the rooms run (`LocalRooms` by default; a server's
            ``services.rooms`` shares them with the other processes on its backend).

    """

    def __init__(
        self,
        *,
        history_size: int = 50,
        max_frame_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Clock = time.time,
        rooms: RoomStore | None = None,
    ) -> None:
        super().__init__()
        if history_size < 0:
            raise UsageError(f"history_size must be >= 0, got {history_size}")
        self.history_size = history_size
        self.max_frame_size = max_frame_size
        self._clock = clock
        self._store: RoomStore = rooms if rooms is not None else LocalRooms()
        self._rooms: dict[str, _RoomEntry] = {}

    def __repr__(self) -> str:
        return f"<RoomManager rooms={len(self._rooms)}>"

    @handles(JoinRoom)
    def _join(self, message: JoinRoom) -> ActorRef[Room]:
        member = message.member
        if not isinstance(message.room, str) or not isinstance(member, Member):
            raise UsageError("JoinRoom needs a room name (str) and a Member")
        entry = self._rooms.get(message.room)
        if entry is not None and member.id in entry.members:
            raise UsageError(f"member {member.id!r} is already in room {message.room!r}")
        if message.unique_name and entry is not None and entry.holds(member.name):
            raise NameTaken(message.room, member.name)
        if entry is None:
            ref = self._store.start(
                message.room,
                manager=self.actor_ref,
                history_size=self.history_size,
                max_frame_size=self.max_frame_size,
                clock=self._clock,
            )
            entry = self._rooms[message.room] = _RoomEntry(ref)
            log.debug("room created", room=message.room)
        entry.ref.tell(_AddMember(member, message.unique_name))
        entry.members[member.id] = member
        return entry.ref

    @handles(LeaveRoom)
    def _leave(self, message: LeaveRoom) -> bool:
        entry = self._rooms.get(message.room)
        if entry is None or message.member_id not in entry.members:
            return False
        del entry.members[message.member_id]
        tell_quietly(entry.ref, _RemoveMember(message.member_id, message.reason))
        if not entry.members:
            del self._rooms[message.room]
            # Queued after the leave, so the room handles it first; a later join makes
            # a fresh room.
            entry.ref.stop(block=False)
            log.debug("room removed", room=message.room)
        return True

    @handles(ListRooms)
    def _list(self, message: ListRooms) -> dict[str, int]:
        return {name: len(entry.members) for name, entry in self._rooms.items()}

    @handles(FindRoom)
    def _find(self, message: FindRoom) -> ActorRef[Room] | None:
        entry = self._rooms.get(message.room)
        return None if entry is None else entry.ref

    def on_stop(self) -> None:
        rooms, self._rooms = self._rooms, {}
        for entry in rooms.values():
            entry.ref.stop(block=False)
