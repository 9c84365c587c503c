"""RoomManager and Room: real actors on the test's loop, members are recording actors.

The stateful test at the end drives joins, leaves and posts from concurrent tasks and
checks the rooms against a model: membership, room lifetimes, delivery to every member
and only to members, exactly once, per-sender order and gap-free event numbering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from pykka import ActorDeadError, ActorRef

from aiowt.actors import LoopActor, ask
from aiowt.actors.rooms import (
    FindRoom,
    GetHistory,
    GetMembers,
    JoinRoom,
    LeaveRoom,
    ListRooms,
    Member,
    MemberInfo,
    MemberJoined,
    MemberLeft,
    MessagePosted,
    NameTaken,
    Post,
    Room,
    RoomEventDelivered,
    RoomManager,
    RoomSignalDelivered,
    RoomSnapshot,
    Signal,
)
from aiowt.transport.errors import UsageError
from aiowt.transport.framing import FrameDecoder, decode_message

T = TypeVar("T")
TIMEOUT = 5.0


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


# --- a member that records what it receives ---------------------------------------------------


@dataclass(frozen=True)
class GetLog:
    pass


class Recorder(LoopActor):
    """A room member: keeps every delivery; `GetLog` returns them (after all earlier ones)."""

    register_globally: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.log: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GetLog):
            return tuple(self.log)
        self.log.append(message)
        return None


async def log_of(ref: ActorRef[Any]) -> list[Any]:
    return list(await within(ref.ask(GetLog(), block=False)))


def wire(frame: bytes) -> Any:
    (message,) = FrameDecoder().feed(frame)
    return message


class Clock:
    """A deterministic clock: 1000.0, 1001.0, ..."""

    def __init__(self) -> None:
        self.now = 999.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
async def rooms() -> AsyncIterator[ActorRef[RoomManager]]:
    ref = RoomManager.start(history_size=3, clock=Clock())
    yield ref
    await within(ref.stop(block=False))


@pytest.fixture
async def recorders() -> AsyncIterator[dict[str, ActorRef[Recorder]]]:
    refs: dict[str, ActorRef[Recorder]] = {}
    yield refs
    for ref in refs.values():
        await within(ref.stop(block=False))


async def join(
    rooms: ActorRef[RoomManager],
    recorders: dict[str, ActorRef[Recorder]],
    room: str,
    member_id: str,
) -> ActorRef[Room]:
    ref = recorders.get(member_id)
    if ref is None:
        ref = recorders[member_id] = Recorder.start()
    return await within(ask(rooms, JoinRoom(room, Member(member_id, member_id.title(), ref))))


async def settle(rooms: ActorRef[RoomManager], *room_refs: ActorRef[Room]) -> None:
    """Wait until everything told so far has been delivered to the members.

    Asks are answered in order: the manager's answer means its forwards are queued at
    the rooms; a room's answer means its deliveries are queued at the members.
    """
    await within(ask(rooms, ListRooms()))
    for ref in room_refs:
        # A stopped room handled everything queued before its stop.
        with contextlib.suppress(ActorDeadError):
            await within(ask(ref, GetMembers()))


# --- join, leave, events ------------------------------------------------------------------------


async def test_a_new_member_gets_the_snapshot_first_then_its_own_join(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    await settle(rooms, room)
    snapshot, joined = await log_of(recorders["ada"])
    assert isinstance(snapshot, RoomSnapshot)
    assert snapshot.room == "lobby"
    assert snapshot.you == MemberInfo("ada", "Ada")
    assert snapshot.members == (MemberInfo("ada", "Ada"),)
    assert snapshot.history == ()
    assert wire(snapshot.frame) == {
        "type": "history",
        "room": "lobby",
        "you": {"id": "ada", "name": "Ada"},
        "members": [{"id": "ada", "name": "Ada"}],
        "messages": [],
    }
    assert isinstance(joined, RoomEventDelivered)
    assert joined.event == MemberJoined("lobby", MemberInfo("ada", "Ada"), 1, 1000.0)
    assert wire(joined.frame) == {
        "type": "join",
        "room": "lobby",
        "seq": 1,
        "time": 1000.0,
        "id": "ada",
        "name": "Ada",
    }


async def test_members_see_each_other_join_and_leave(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    await join(rooms, recorders, "lobby", "bob")
    assert await within(ask(rooms, LeaveRoom("lobby", "bob", "disconnected"))) is True
    assert await within(ask(rooms, LeaveRoom("lobby", "bob"))) is False
    await settle(rooms, room)
    ada = [m.event for m in (await log_of(recorders["ada"]))[1:]]
    assert ada == [
        MemberJoined("lobby", MemberInfo("ada", "Ada"), 1, 1000.0),
        MemberJoined("lobby", MemberInfo("bob", "Bob"), 2, 1001.0),
        MemberLeft("lobby", MemberInfo("bob", "Bob"), 3, 1002.0, "disconnected"),
    ]
    bob = await log_of(recorders["bob"])
    assert bob[0].members == (MemberInfo("ada", "Ada"), MemberInfo("bob", "Bob"))
    # Bob's own leave is not sent to him: he is no longer a member.
    assert [m.event.seq for m in bob[1:]] == [2]
    assert await within(ask(room, GetMembers())) == (MemberInfo("ada", "Ada"),)
    assert wire((await log_of(recorders["ada"]))[-1].frame)["reason"] == "disconnected"


async def test_joining_twice_is_a_usage_error(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    await join(rooms, recorders, "lobby", "ada")
    with pytest.raises(UsageError, match="already in room"):
        await join(rooms, recorders, "lobby", "ada")
    # The same member may be in another room at the same time.
    await join(rooms, recorders, "kitchen", "ada")
    assert await within(ask(rooms, ListRooms())) == {"lobby": 1, "kitchen": 1}


async def test_a_room_is_removed_with_its_last_member_and_starts_fresh(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    first = await join(rooms, recorders, "lobby", "ada")
    first.tell(Post("ada", {"text": "remember me?"}))
    await within(ask(rooms, LeaveRoom("lobby", "ada")))
    assert await within(ask(rooms, ListRooms())) == {}
    assert await within(ask(rooms, FindRoom("lobby"))) is None
    await within(_stopped(first))
    second = await join(rooms, recorders, "lobby", "bob")
    assert second != first
    await settle(rooms, second)
    snapshot, joined = await log_of(recorders["bob"])
    assert snapshot.history == ()
    assert joined.event.seq == 1


async def _stopped(ref: ActorRef[Any]) -> None:
    # A stop request queued behind the manager's: answered once the room has stopped.
    await ref.stop(block=False)
    assert not ref.is_alive()


# --- posting and history ------------------------------------------------------------------------


async def test_a_post_reaches_every_member_stamped_by_the_room(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    await join(rooms, recorders, "lobby", "bob")
    await join(rooms, recorders, "kitchen", "cy")
    # A sender's fields cannot forge the room's stamps.
    fields = {"text": "hi", "from": "mallory", "seq": 99}
    assert await within(ask(room, Post("bob", fields))) == 3
    await settle(rooms, room)
    for member in ("ada", "bob"):
        delivery = (await log_of(recorders[member]))[-1]
        assert delivery.event == MessagePosted("lobby", MemberInfo("bob", "Bob"), fields, 3, 1003.0)
        assert (
            wire(delivery.frame)
            == delivery.event.to_wire()
            == {
                "type": "message",
                "room": "lobby",
                "seq": 3,
                "time": 1003.0,
                "from": "Bob",
                "id": "bob",
                "text": "hi",
            }
        )
    # Only to members: the kitchen heard nothing of it.
    assert [type(m) for m in await log_of(recorders["cy"])] == [RoomSnapshot, RoomEventDelivered]


async def test_a_post_from_a_non_member_is_dropped(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    assert await within(ask(room, Post("eve", {"text": "let me in"}))) is None
    await settle(rooms, room)
    assert len(await log_of(recorders["ada"])) == 2
    assert await within(ask(room, GetHistory())) == ()


async def test_a_post_that_cannot_be_encoded_fails_and_changes_nothing(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    with pytest.raises(UsageError, match="cannot encode"):
        await within(ask(room, Post("ada", {"text": object()})))
    with pytest.raises(UsageError, match="exceeds the limit"):
        await within(ask(room, Post("ada", {"text": "x" * (2 * 1024 * 1024)})))
    # The room lives on, numbering and history untouched.
    assert await within(ask(room, Post("ada", {"text": "fine"}))) == 2
    assert [e.fields["text"] for e in await within(ask(room, GetHistory()))] == ["fine"]


async def test_late_joiners_get_the_last_n_messages(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    for n in range(5):
        room.tell(Post("ada", {"text": f"m{n}"}))
    await join(rooms, recorders, "lobby", "bob")
    await settle(rooms, room)
    snapshot = (await log_of(recorders["bob"]))[0]
    assert [e.fields["text"] for e in snapshot.history] == ["m2", "m3", "m4"]  # history_size=3
    assert [e.seq for e in snapshot.history] == [4, 5, 6]
    assert [m["text"] for m in wire(snapshot.frame)["messages"]] == ["m2", "m3", "m4"]
    assert wire(snapshot.frame)["messages"][0] == snapshot.history[0].to_wire()


async def test_a_history_too_large_for_one_frame_keeps_the_newest_messages(
    recorders: dict[str, ActorRef[Recorder]],
) -> None:
    rooms = RoomManager.start(history_size=10, max_frame_size=2500)
    try:
        room = await join(rooms, recorders, "lobby", "ada")
        for n in range(10):
            room.tell(Post("ada", {"text": f"{n}" * 400}))
        await join(rooms, recorders, "lobby", "bob")
        await settle(rooms, room)
        snapshot = (await log_of(recorders["bob"]))[0]
        assert len(snapshot.history) == 10  # the full history stays in the message
        sent = [m["text"][0] for m in wire(snapshot.frame)["messages"]]
        assert 0 < len(sent) < 10
        assert sent == [str(n) for n in range(10 - len(sent), 10)]
    finally:
        await within(rooms.stop(block=False))


# --- signals ------------------------------------------------------------------------------------


async def test_a_signal_goes_to_the_others_only_and_is_not_stored(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    await join(rooms, recorders, "lobby", "bob")
    assert await within(ask(room, Signal("ada", "typing"))) == 1
    assert await within(ask(room, Signal("eve", "typing"))) == 0
    await settle(rooms, room)
    assert not any(isinstance(m, RoomSignalDelivered) for m in await log_of(recorders["ada"]))
    signal = (await log_of(recorders["bob"]))[-1]
    assert isinstance(signal, RoomSignalDelivered)
    assert decode_message(signal.payload) == {
        "type": "typing",
        "room": "lobby",
        "time": signal.event.time,
        "from": "Ada",
        "id": "ada",
    }
    assert await within(ask(room, GetHistory())) == ()
    # A numbered event after it still follows the join events without a gap.
    assert await within(ask(room, Post("bob", {"text": "ok"}))) == 3


# --- members that die, rooms used alone, stopping -----------------------------------------------


async def test_a_member_that_stopped_without_leaving_is_removed_as_gone(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    room = await join(rooms, recorders, "lobby", "ada")
    await join(rooms, recorders, "lobby", "bob")
    await within(recorders["bob"].stop(block=False))
    room.tell(Post("ada", {"text": "anyone?"}))
    # The room reports bob to the manager, which removes him like any leave.
    await settle(rooms, room)
    await settle(rooms, room)
    assert await within(ask(room, GetMembers())) == (MemberInfo("ada", "Ada"),)
    assert await within(ask(rooms, ListRooms())) == {"lobby": 1}
    left = (await log_of(recorders["ada"]))[-1].event
    assert left == MemberLeft("lobby", MemberInfo("bob", "Bob"), 4, left.time, "gone")


async def test_stopping_the_manager_stops_every_room(
    recorders: dict[str, ActorRef[Recorder]],
) -> None:
    rooms = RoomManager.start()
    lobby = await join(rooms, recorders, "lobby", "ada")
    kitchen = await join(rooms, recorders, "kitchen", "ada")
    await within(rooms.stop(block=False))
    for room in (lobby, kitchen):
        await within(_stopped(room))


async def test_the_manager_refuses_bad_joins_and_negative_history() -> None:
    with pytest.raises(UsageError):
        RoomManager(history_size=-1)
    rooms = RoomManager.start()
    try:
        with pytest.raises(UsageError):
            await within(ask(rooms, JoinRoom("lobby", "not a member")))  # type: ignore[arg-type]
        assert await within(ask(rooms, ListRooms())) == {}
    finally:
        await within(rooms.stop(block=False))


async def test_a_unique_name_join_is_refused_while_a_live_member_has_the_name(
    rooms: ActorRef[RoomManager], recorders: dict[str, ActorRef[Recorder]]
) -> None:
    for member_id in ("a1", "a2", "a3", "a4"):
        recorders[member_id] = Recorder.start()

    def ada(member_id: str) -> JoinRoom:
        return JoinRoom("lobby", Member(member_id, "ada", recorders[member_id]), unique_name=True)

    # Four joins with one name, all queued before the first is handled: one gets in.
    results = await within(
        asyncio.gather(*(ask(rooms, ada(m)) for m in ("a1", "a2", "a3")), return_exceptions=True)
    )
    assert isinstance(results[0], ActorRef)
    for refused in results[1:]:
        assert isinstance(refused, NameTaken)
        assert str(refused) == "the name 'ada' is taken in room 'lobby'"
    assert await within(ask(rooms, ListRooms())) == {"lobby": 1}
    # Without unique_name (the default), names may repeat; other rooms are separate.
    await within(ask(rooms, JoinRoom("lobby", Member("x", "ada", recorders["a4"]))))
    await within(ask(rooms, LeaveRoom("lobby", "x")))
    kitchen = JoinRoom("kitchen", Member("a2", "ada", recorders["a2"]), unique_name=True)
    await within(ask(rooms, kitchen))
    # Free again once its holder left.
    await within(ask(rooms, LeaveRoom("lobby", "a1")))
    await within(ask(rooms, ada("a3")))
    # ... or once its holder's actor stopped (its leave may still be on the way).
    await within(recorders.pop("a3").stop(block=False))
    lobby = await within(ask(rooms, ada("a4")))
    await settle(rooms, lobby)  # the room found a3 gone: its leave went through the manager
    assert [m.id for m in await within(ask(lobby, GetMembers()))] == ["a4"]
    assert await within(ask(rooms, ListRooms())) == {"lobby": 1, "kitchen": 1}


# --- the stateful model test ---------------------------------------------------------------------

ROOMS = ("r0", "r1", "r2")
MEMBERS = ("m0", "m1", "m2", "m3", "m4")


@dataclass(frozen=True)
class Script:
    """What one task does to one (room, member) pair in a batch, in order."""

    room: str
    member: str
    join: bool
    posts: int
    leave: bool
    yields: tuple[int, ...]
    """How many times to yield to the loop before each step: the interleaving."""


class RoomsMachine(RuleBasedStateMachine):
    """Concurrent batches of joins, posts and leaves, checked against a set model.

    In a batch each (room, member) pair is driven by at most one task, so the final
    membership does not depend on the interleaving; what members receive is checked
    with what the interleaving cannot change.
    """

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.members: set[tuple[str, str]] = set()
        self.batches = 0
        self.refs: dict[str, ActorRef[Recorder]] = {}
        self.seen_rooms: list[ActorRef[Room]] = []
        self.checked: dict[str, int] = dict.fromkeys(MEMBERS, 0)
        # (member, room) -> last seq seen in the current membership span, or None.
        self.spans: dict[tuple[str, str], int | None] = {}
        # (member, room) -> the newest seq in the member's last snapshot's history.
        self.snapshot_top: dict[tuple[str, str], int] = {}
        # (member, room, sender) -> last (batch, k) received from that sender.
        self.order: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.manager = self.runner.run(self._start())

    async def _start(self) -> ActorRef[RoomManager]:
        self.refs = {m: Recorder.start() for m in MEMBERS}
        return RoomManager.start(history_size=4)

    @rule(data=st.data())
    def batch(self, data: st.DataObject) -> None:
        pairs = data.draw(
            st.lists(
                st.tuples(st.sampled_from(ROOMS), st.sampled_from(MEMBERS)),
                unique=True,
                max_size=6,
            ),
            label="pairs",
        )
        scripts = []
        for room, member in pairs:
            is_member = (room, member) in self.members
            posts = data.draw(st.integers(0, 3), label="posts")
            leave = data.draw(st.booleans(), label="leave")
            yields = data.draw(st.lists(st.integers(0, 3), min_size=posts + 2, max_size=posts + 2))
            scripts.append(Script(room, member, not is_member, posts, leave, tuple(yields)))
        self.batches += 1
        note(f"batch {self.batches}: {scripts}")
        self.runner.run(within(self._run_batch(scripts)))

    async def _run_batch(self, scripts: list[Script]) -> None:
        before = set(self.members)
        await asyncio.gather(*(self._run_script(s) for s in scripts))
        for s in scripts:
            if s.join:
                self.members.add((s.room, s.member))
            if s.leave:
                self.members.discard((s.room, s.member))
        await settle(self.manager, *self.seen_rooms)
        await self._check_membership()
        await self._check_deliveries(scripts, before)

    async def _run_script(self, script: Script) -> None:
        yields = iter(script.yields)

        async def pause() -> None:
            for _ in range(next(yields)):
                await asyncio.sleep(0)

        key = (script.room, script.member)
        await pause()
        room: ActorRef[Room] | None
        if script.join:
            ref = self.refs[script.member]
            room = await ask(self.manager, JoinRoom(script.room, Member(script.member, "", ref)))
            if room not in self.seen_rooms:
                self.seen_rooms.append(room)
        else:
            room = await ask(self.manager, FindRoom(script.room))
        assert room is not None
        for k in range(script.posts):
            await pause()
            room.tell(Post(script.member, {"text": f"{self.batches}:{k}"}))
        await pause()
        if script.leave:
            self.manager.tell(LeaveRoom(*key))

    async def _check_membership(self) -> None:
        expected: dict[str, set[str]] = defaultdict(set)
        for room, member in self.members:
            expected[room].add(member)
        listed = await ask(self.manager, ListRooms())
        assert listed == {room: len(ids) for room, ids in expected.items()}
        for room, ids in expected.items():
            ref = await ask(self.manager, FindRoom(room))
            assert ref is not None
            assert {m.id for m in await ask(ref, GetMembers())} == ids
            history = await ask(ref, GetHistory())
            assert len(history) <= 4
            assert [e.seq for e in history] == sorted({e.seq for e in history})

    async def _check_deliveries(self, scripts: list[Script], before: set[tuple[str, str]]) -> None:
        touched = {(s.room, s.member) for s in scripts if s.join or s.leave}
        posts = {(s.room, s.member, f"{self.batches}:{k}") for s in scripts for k in range(s.posts)}
        received: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        for member, ref in self.refs.items():
            log = await log_of(ref)
            new, self.checked[member] = log[self.checked[member] :], len(log)
            for delivery in new:
                self._check_span(member, delivery)
                if isinstance(delivery, RoomEventDelivered) and isinstance(
                    delivery.event, MessagePosted
                ):
                    event = delivery.event
                    received[(event.room, event.sender.id, event.fields["text"])][member] += 1
        assert set(received) <= posts, "a message nobody posted"
        for room, sender, text in posts:
            got = received[(room, sender, text)]
            assert all(n == 1 for n in got.values()), f"{text} delivered twice: {got}"
            for member in MEMBERS:
                pair = (room, member)
                stable = pair in before and pair in self.members and pair not in touched
                if stable or member == sender:
                    assert got[member] == 1, f"{member} missed {text} in {room}"
                elif pair not in before and pair not in touched:
                    assert got[member] == 0, f"{member} got {text} but was never in {room}"

    def _check_span(self, member: str, delivery: object) -> None:
        if isinstance(delivery, RoomSnapshot):
            assert delivery.you.id == member
            assert member in {m.id for m in delivery.members}
            seqs = [e.seq for e in delivery.history]
            assert seqs == sorted(set(seqs))
            assert len(seqs) <= 4
            self.spans[(member, delivery.room)] = None
            self.snapshot_top[(member, delivery.room)] = max(seqs, default=0)
            return
        assert isinstance(delivery, RoomEventDelivered)
        event = delivery.event
        key = (member, event.room)
        assert key in self.spans, "an event before the snapshot"
        last = self.spans[key]
        if last is None:
            # Right after the snapshot comes the member's own join.
            assert isinstance(event, MemberJoined)
            assert event.member.id == member
            assert event.seq > self.snapshot_top[key], "history newer than the join"
        else:
            assert event.seq == last + 1, f"{member} in {event.room}: seq {last} then {event.seq}"
        self.spans[key] = event.seq
        if isinstance(event, MessagePosted):
            batch, k = map(int, event.fields["text"].split(":"))
            order_key = (member, event.room, event.sender.id)
            assert self.order.get(order_key, (0, -1)) < (batch, k), "per-sender order broken"
            self.order[order_key] = (batch, k)

    def teardown(self) -> None:
        async def stop() -> None:
            await within(self.manager.stop(block=False))
            for ref in self.refs.values():
                await within(ref.stop(block=False))

        try:
            self.runner.run(stop())
        finally:
            self.runner.close()


RoomsMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRoomsMachine = RoomsMachine.TestCase
