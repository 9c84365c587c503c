"""Rooms across processes on a real redis-server.

Two backends started in one test process stand for two server processes: each has its
own connections, its own `RedisBridge` and its own `RoomManager`; members are recording
actors, as in `test_rooms.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
from pykka import ActorRef

from aiowt.actors import RoomManager, Services, ask
from aiowt.actors.redis_backend import RedisBackend
from aiowt.actors.redis_bridge import Published, Renew
from aiowt.actors.redis_rooms import RedisRooms
from aiowt.actors.rooms import (
    GetHistory,
    GetMembers,
    JoinRefused,
    JoinRoom,
    LeaveRoom,
    Member,
    MemberJoined,
    MemberLeft,
    MessagePosted,
    NameTaken,
    Post,
    Room,
    RoomEventDelivered,
    RoomSignalDelivered,
    RoomSnapshot,
    Signal,
)
from tests.actors.test_rooms import Recorder, log_of
from tests.conftest import bounded
from tests.redis_server import RedisServer


class Watched(Recorder):
    """A recorder that sets `changed` on every delivery, so a test can wait for one."""

    def __init__(self, changed: asyncio.Event) -> None:
        super().__init__()
        self.changed = changed

    def on_receive(self, message: Any) -> Any:
        result = super().on_receive(message)
        self.changed.set()
        return result


Watch = tuple[ActorRef[Any], asyncio.Event]


async def until(watch: Watch, done: Callable[[list[Any]], bool], seconds: float = 10) -> list[Any]:
    """The member's log once `done` says so: woken by each delivery, within `seconds`."""
    ref, changed = watch
    async with bounded(seconds):
        while not done(log := await log_of(ref)):
            await changed.wait()
            changed.clear()
    return log


class Process:
    """One "server process": its services on the backend, and a room manager on them."""

    def __init__(self, services: Services, manager: ActorRef[RoomManager]) -> None:
        self.services = services
        self.manager = manager
        self.members: list[ActorRef[Any]] = []

    async def join(self, room: str, member_id: str) -> tuple[ActorRef[Room], Watch]:
        """Join, and wait for the snapshot (the join itself goes through Redis)."""
        changed = asyncio.Event()
        recorder = Watched.start(changed)
        self.members.append(recorder)
        ref = await ask(self.manager, JoinRoom(room, Member(member_id, member_id, recorder)))
        await until((recorder, changed), bool)
        return ref, (recorder, changed)

    async def stop(self) -> None:
        await self.manager.stop(block=False)
        for member in self.members:
            if member.is_alive():
                await member.stop(block=False)
        await self.services.stop()


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Callable[..., Process]]:
    """Start processes on one fresh prefix; all stopped after the test."""
    url = redis_server.url()
    started: list[Process] = []

    def start(history_size: int = 50, url_options: str = "") -> Process:
        services = RedisBackend.from_url(url + url_options).start()
        manager = RoomManager.start(history_size=history_size, rooms=services.rooms)
        started.append(Process(services, manager))
        return started[-1]

    yield start
    for process in started:
        await process.stop()


def numbered(log: list[Any]) -> list[Any]:
    return [d.event for d in log if isinstance(d, RoomEventDelivered)]


async def settled(watch: Watch, count: int) -> list[Any]:
    """The member's numbered events once it has `count` of them."""
    return numbered(await until(watch, lambda log: len(numbered(log)) >= count))


async def test_members_on_two_processes_see_one_room(cluster: Callable[..., Process]) -> None:
    a, b = cluster(), cluster()
    room_a, alice = await a.join("lobby", "alice")
    room_b, bob = await b.join("lobby", "bob")
    snapshot = (await log_of(bob[0]))[0]
    assert isinstance(snapshot, RoomSnapshot)
    assert [m.id for m in snapshot.members] == ["alice", "bob"]  # presence is cluster-wide
    await ask(room_a, Post("alice", {"text": "hi bob"}))
    await ask(room_b, Post("bob", {"text": "hi alice"}))
    for recorder in (alice, bob):
        events = (await settled(recorder, 4 if recorder is alice else 3))[-2:]
        assert [(e.sender.id, e.fields["text"]) for e in events] == [
            ("alice", "hi bob"),
            ("bob", "hi alice"),
        ]
    assert [m.id for m in await ask(room_a, GetMembers())] == ["alice", "bob"]
    await ask(b.manager, LeaveRoom("lobby", "bob"))
    left = (await settled(alice, 5))[-1]
    assert isinstance(left, MemberLeft)
    assert (left.member.id, left.reason) == ("bob", "left")
    assert [m.id for m in await ask(room_a, GetMembers())] == ["alice"]


async def test_a_thousand_posts_from_both_sides_arrive_in_one_order(
    cluster: Callable[..., Process],
) -> None:
    a, b = cluster(), cluster()
    room_a, first = await a.join("busy", "a1")
    _, second = await a.join("busy", "a2")
    room_b, third = await b.join("busy", "b1")

    async def talk(room: ActorRef[Room], sender: str, count: int) -> None:
        for n in range(count):
            room.tell(Post(sender, {"n": n}))
            if n % 50 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(talk(room_a, "a1", 500), talk(room_b, "b1", 500))
    views = []
    for recorder, joined_after in ((first, 0), (second, 1), (third, 2)):
        events = await settled(recorder, 1000 + 3 - joined_after)
        posts = [e for e in events if isinstance(e, MessagePosted)]
        views.append([(e.seq, e.sender.id, e.fields["n"]) for e in posts])
    assert views[0] == views[1] == views[2]
    assert len(views[0]) == 1000
    seqs = [seq for seq, _, _ in views[0]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 1000  # noqa: PT018
    for sender in ("a1", "b1"):  # each sender's posts in the order it sent them
        assert [n for _, s, n in views[0] if s == sender] == list(range(500))


async def test_late_joiners_and_restarted_processes_catch_up_from_history(
    cluster: Callable[..., Process],
) -> None:
    a = cluster(history_size=3)
    room_a, _ = await a.join("news", "anchor")
    for n in range(5):
        await ask(room_a, Post("anchor", {"n": n}))
    b = cluster(history_size=3)  # a process started later (or restarted): nothing local
    _, late = await b.join("news", "late")
    snapshot = (await log_of(late[0]))[0]
    assert isinstance(snapshot, RoomSnapshot)
    assert [m.fields["n"] for m in snapshot.history] == [2, 3, 4]
    assert [m.fields["n"] for m in await ask(room_a, GetHistory())] == [2, 3, 4]


async def test_a_gap_in_the_numbering_is_filled_from_the_log(
    cluster: Callable[..., Process],
) -> None:
    a, b = cluster(), cluster()
    room_a, _ = await a.join("gaps", "writer")
    room_b, reader = await b.join("gaps", "reader")
    await settled(reader, 1)  # its own join
    await ask(room_a, Post("writer", {"n": 1}))
    await ask(room_a, Post("writer", {"n": 2}))
    await settled(reader, 3)
    # A publication lost on the way (as after a dropped connection): the next one
    # arrives, the room sees the gap and fetches what it missed, in order.
    lost = await ask(room_a, Post("writer", {"n": 3}))
    late = await ask(room_a, Post("writer", {"n": 4}))
    assert (lost, late) is not None
    events = await settled(reader, 5)
    assert [e.fields["n"] for e in events if isinstance(e, MessagePosted)] == [1, 2, 3, 4]
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    again = msgpack.packb({"type": "message", "room": "gaps", "id": "x", "from": "x"})
    room_b.tell(Published("", f"{late} ".encode() + again))
    assert len(await settled(reader, 5)) == 5  # a duplicate is not delivered twice


async def test_garbage_on_a_rooms_channel_is_ignored(cluster: Callable[..., Process]) -> None:
    a = cluster()
    room, member = await a.join("junk", "member")
    await settled(member, 1)
    for junk in (b"", b"x y", b"7 \xc1", b"8 " + msgpack.packb([1, 2])):
        room.tell(Published("", junk))
    assert await ask(room, Post("member", {"text": "still fine"}))
    events = await settled(member, 2)
    assert [e.fields["text"] for e in events if isinstance(e, MessagePosted)] == ["still fine"]


async def test_signals_cross_processes_and_are_not_stored(cluster: Callable[..., Process]) -> None:
    a, b = cluster(), cluster()
    room_a, typer = await a.join("sig", "typer")
    _, watcher = await b.join("sig", "watcher")
    await settled(typer, 2)
    assert await ask(room_a, Signal("typer", "typing")) == 1
    log = await until(watcher, lambda log: any(isinstance(d, RoomSignalDelivered) for d in log))
    (signal,) = [d for d in log if isinstance(d, RoomSignalDelivered)]
    assert (signal.event.kind, signal.event.sender.id) == ("typing", "typer")
    assert not [d for d in await log_of(typer[0]) if isinstance(d, RoomSignalDelivered)]
    assert await ask(room_a, GetHistory()) == ()


async def test_a_dead_processs_members_are_announced_gone_after_their_lease(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url(lease=15)
    clock = [1_000_000]
    processes = []
    try:
        for _ in range(2):
            services = RedisBackend.from_url(url).start()
            assert isinstance(services.rooms, RedisRooms)
            services.rooms.clock = lambda: clock[0]
            manager = RoomManager.start(rooms=services.rooms)
            processes.append(Process(services, manager))
        doomed, survivor = processes
        await doomed.join("r", "ghost")
        room, alive = await survivor.join("r", "alive")
        await settled(alive, 1)
        await doomed.services.rooms.bridge.stop(block=False)  # the process dies: no leave
        clock[0] += 15_001  # one lease later, the next renewal sweeps it
        room.tell(Renew())
        events = await settled(alive, 2)
        assert isinstance(events[-1], MemberLeft)
        assert (events[-1].member.id, events[-1].reason) == ("ghost", "gone")
    finally:
        for process in processes:
            await process.stop()


async def test_rooms_go_local_while_redis_is_down_and_catch_up_after(
    own_redis_server: RedisServer,
) -> None:
    url = own_redis_server.url(timeout=0.2)
    a_services = RedisBackend.from_url(url).start()
    b_services = RedisBackend.from_url(url).start()
    a = Process(a_services, RoomManager.start(rooms=a_services.rooms))
    b = Process(b_services, RoomManager.start(rooms=b_services.rooms))
    try:
        room_a, one = await a.join("r", "one")
        _, two = await a.join("r", "two")
        _, far = await b.join("r", "far")
        await settled(one, 3)
        own_redis_server.stop()
        # Down: the members of one process still talk to each other, outside the order.
        assert await ask(room_a, Post("one", {"text": "still here"})) == 0
        local = (await settled(two, 3))[-1]
        assert isinstance(local, MessagePosted)
        assert (local.seq, local.fields["text"]) == (0, "still here")
        own_redis_server.start()
        # Back (empty): the bridges reconnect, presence is written back, and posts cross
        # processes again.
        for _ in range(150):  # until the bridge has reconnected (its backoff decides)
            if await ask(room_a, Post("one", {"text": "back"})):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the room did not get back to Redis")

        def got_back(log: list[Any]) -> bool:
            posts = [e for e in numbered(log) if isinstance(e, MessagePosted)]
            return any(e.fields["text"] == "back" for e in posts)

        await until(far, got_back, 15)
        assert {m.id for m in await ask(room_a, GetMembers())} == {"one", "two", "far"}
        assert isinstance(numbered(await log_of(far[0]))[0], MemberJoined)
    finally:
        await a.stop()
        await b.stop()


async def test_a_name_is_unique_across_processes(cluster: Callable[..., Process]) -> None:
    a, b = cluster(), cluster()
    joins: list[tuple[Process, Watch]] = []
    for process in (a, b, a, b):
        changed = asyncio.Event()
        recorder = Watched.start(changed)
        process.members.append(recorder)
        joins.append((process, (recorder, changed)))
    # Four joins as "ada" at once, two on each process: each manager lets one of its
    # own in (the other gets NameTaken at once), and Redis lets one of those two in.
    replies = await asyncio.gather(
        *(
            ask(p.manager, JoinRoom("lobby", Member(f"m{n}", "ada", w[0]), unique_name=True))
            for n, (p, w) in enumerate(joins)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(reply, NameTaken) for reply in replies) == 2
    passed = [
        w for (_, w), reply in zip(joins, replies, strict=True) if not isinstance(reply, NameTaken)
    ]
    firsts = [(await until(watch, bool))[0] for watch in passed]
    assert sorted(type(first).__name__ for first in firsts) == ["JoinRefused", "RoomSnapshot"]
    refused = next(first for first in firsts if isinstance(first, JoinRefused))
    assert refused.reason == "the name 'ada' is taken in room 'lobby'"
    admitted = next(first for first in firsts if isinstance(first, RoomSnapshot))
    assert [m.name for m in admitted.members] == ["ada"]
    # Without unique_name, names may repeat across processes as before.
    changed = asyncio.Event()
    other = Watched.start(changed)
    b.members.append(other)
    await ask(b.manager, JoinRoom("lobby", Member("b3", "ada", other)))
    snapshot = (await until((other, changed), bool))[0]
    assert isinstance(snapshot, RoomSnapshot)
    assert [m.name for m in snapshot.members] == ["ada", "ada"]
