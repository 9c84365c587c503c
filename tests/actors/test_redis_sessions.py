"""`SharedSessionRegistry` on a real Redis: two "processes" (each its own backend
services) in one test process. The transport sessions are the registry tests' fakes
(this is the registry's layer); `tests/e2e/test_cluster.py` sends between real server
processes and real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import msgpack
import pytest
from redis.asyncio import from_url

from aiowt.actors import Services, ask
from aiowt.actors.redis_backend import RedisBackend
from aiowt.actors.redis_bridge import Published, RedisBridge
from aiowt.actors.redis_sessions import SharedSessionRegistry
from aiowt.actors.sessions import (
    Attach,
    Broadcast,
    BroadcastExcept,
    CountSessions,
    Delivery,
    Listed,
    ListSessions,
    Multicast,
    Register,
    ToUser,
    Unregister,
)
from aiowt.transport.framing import decode_message
from aiowt.transport.session import Session
from tests.actors.test_sessions import FakeSession
from tests.conftest import bounded
from tests.redis_server import RedisServer


class Inbox(FakeSession):
    """A fake session that says when a datagram arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def send_datagram(self, data: bytes) -> bool:
        sent = super().send_datagram(data)
        self.arrived.set()
        return sent

    async def next(self, seconds: float = 5) -> Any:
        async with bounded(seconds):
            await self.arrived.wait()
        self.arrived.clear()
        return decode_message(self.datagrams[-1])


async def join(services: Services, session_id: str) -> Inbox:
    """A session registered and attached in `services`' process."""
    inbox = Inbox()
    assert await ask(services.sessions, Register(session_id, remote_ip="127.0.0.1", path="/p"))
    assert await ask(services.sessions, Attach(session_id, cast(Session, inbox)))
    return inbox


@pytest.fixture
async def processes(redis_server: RedisServer) -> AsyncIterator[Callable[..., Services]]:
    url = redis_server.url()
    started: list[Services] = []

    def start(**options: object) -> Services:
        suffix = "".join(f"&{name}={value}" for name, value in options.items())
        started.append(RedisBackend.from_url(url + suffix).start())
        return started[-1]

    yield start
    for services in started:
        await services.stop()


async def test_the_count_is_the_clusters_and_follows_every_process(
    processes: Callable[..., Services],
) -> None:
    a, b = processes(), processes()
    for n in range(3):
        await join(a, f"a{n}")
    for n in range(2):
        await join(b, f"b{n}")
    assert await ask(a.sessions, Listed())
    assert await ask(b.sessions, Listed())
    assert await ask(a.sessions, CountSessions()) == 5
    assert await ask(b.sessions, CountSessions()) == 5
    assert [i.session_id for i in await ask(b.sessions, ListSessions())] == ["b0", "b1"]
    assert await ask(a.sessions, Unregister("a0"))
    assert await ask(a.sessions, Listed())
    assert await ask(b.sessions, CountSessions()) == 4
    await a.stop()  # a clean stop takes its sessions out at once
    assert await ask(b.sessions, CountSessions()) == 2


async def test_a_message_reaches_a_session_on_another_process(
    processes: Callable[..., Services],
) -> None:
    a, b = processes(), processes()
    here, there = await join(a, "here"), await join(b, "there")
    assert await ask(a.sessions, Listed())
    assert await ask(b.sessions, Listed())
    delivery = await ask(a.sessions, Multicast(["here", "there", "nobody"], {"text": "hi"}))
    assert delivery == Delivery(delivered=1, failed=0, missing=1, forwarded=1)
    assert await there.next() == {"text": "hi"}
    assert here.messages() == [{"text": "hi"}]


async def test_a_users_sessions_are_reached_on_every_process(
    processes: Callable[..., Services],
) -> None:
    a, b = processes(), processes()
    tab, phone, other = Inbox(), Inbox(), Inbox()
    for services, session_id, user, inbox in (
        (a, "tab", "ada", tab),
        (b, "phone", "ada", phone),
        (b, "other", "bob", other),
    ):
        assert await ask(services.sessions, Register(session_id, user=user))
        assert await ask(services.sessions, Attach(session_id, cast(Session, inbox)))
        assert await ask(services.sessions, Listed())
    delivery = await ask(a.sessions, ToUser("ada", {"text": "both"}))
    assert (delivery.delivered, delivery.forwarded) == (1, 1)
    assert await phone.next() == {"text": "both"}
    assert tab.messages() == [{"text": "both"}]
    assert other.datagrams == []
    assert await ask(b.sessions, Unregister("phone"))
    assert await ask(b.sessions, Listed())
    delivery = await ask(a.sessions, ToUser("ada", {"text": "tab only"}))
    assert (delivery.delivered, delivery.forwarded) == (1, 0)


async def test_broadcasts_reach_every_process_once(processes: Callable[..., Services]) -> None:
    a, b, c = processes(), processes(), processes()
    inboxes = [await join(a, "a"), await join(b, "b1"), await join(b, "b2"), await join(c, "c")]
    for services in (a, b, c):
        assert await ask(services.sessions, Listed())
    delivery = await ask(a.sessions, Broadcast({"n": 1}))
    assert (delivery.delivered, delivery.forwarded) == (1, 3)
    for inbox in inboxes[1:]:
        assert await inbox.next() == {"n": 1}
    delivery = await ask(b.sessions, BroadcastExcept("a", {"n": 2}))
    assert (delivery.delivered, delivery.forwarded) == (2, 1)
    assert await inboxes[3].next() == {"n": 2}
    assert [m["n"] for m in inboxes[0].messages()] == [1]  # "a" was skipped
    assert [[m["n"] for m in inbox.messages()] for inbox in inboxes[1:]] == [[1, 2]] * 3


async def test_a_dead_processs_sessions_leave_after_its_lease(redis_server: RedisServer) -> None:
    backend = RedisBackend.from_url(redis_server.url())
    url, prefix = backend.url, backend.prefix
    clock = [1_000_000]
    bridge = RedisBridge.start(from_url(url), lease=15)
    a, b = (
        SharedSessionRegistry.start(
            from_url(url), bridge, prefix=prefix, lease=15, timeout=1.0, clock=lambda: clock[0]
        )
        for _ in range(2)
    )
    try:
        for registry, session_id in ((a, "ghost"), (b, "alive")):
            assert await ask(registry, Register(session_id))
            assert await ask(registry, Attach(session_id, cast(Session, Inbox())))
            assert await ask(registry, Listed())
        # From here on a renews nothing, as if it had died (a clean stop would take its
        # sessions out at once): one lease later, b's next script sweeps them away.
        assert await ask(b, CountSessions()) == 2
        clock[0] += 15_001
        assert await ask(b, CountSessions()) == 1
        delivery = await ask(b, Multicast(["ghost"], {"x": 1}))
        assert (delivery.missing, delivery.forwarded) == (1, 0)
    finally:
        for ref in (a, b, bridge):
            await ref.stop(block=False)


async def test_garbage_on_a_channel_is_ignored(processes: Callable[..., Services]) -> None:
    a = processes()
    inbox = await join(a, "s")
    for junk in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb(["x", "smoke", b"", None, None])):
        a.sessions.tell(Published("inbox", junk))
    assert await ask(a.sessions, CountSessions()) == 1
    assert inbox.datagrams == []


async def test_a_restarted_redis_gets_the_sessions_back(own_redis_server: RedisServer) -> None:
    backend = RedisBackend.from_url(own_redis_server.url(timeout=0.2))
    services = backend.start()
    try:
        for n in range(3):
            await join(services, f"s{n}")
        assert await ask(services.sessions, Listed())
        own_redis_server.stop()
        assert await ask(services.sessions, CountSessions()) == 3  # counted here meanwhile
        assert await ask(services.sessions, Unregister("s0"))
        own_redis_server.start()
        # The registry writes its sessions back once Redis answers again.
        async with bounded(15):
            while True:
                if await ask(services.sessions, Listed()):
                    break
                await asyncio.sleep(0.05)
        client = from_url(backend.url)
        async with client:
            listed = await client.hkeys(f"{{{backend.prefix}}}:sessions")
        assert sorted(listed) == [b"s1", b"s2"]
    finally:
        await services.stop()
