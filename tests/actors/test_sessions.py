"""`SessionRegistry`: the cap, lookups, delivery to many that survives failing sessions,
and a concurrent model check."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiowt.actors import ask
from aiowt.actors.sessions import (
    Attach,
    Broadcast,
    BroadcastExcept,
    CountSessions,
    Delivery,
    ListSessions,
    LookupSession,
    Multicast,
    Register,
    SessionRegistry,
    ToUser,
    Unregister,
)
from aiowt.transport import CloseCode, ConnectRequest
from aiowt.transport.errors import SessionClosedError, UsageError, WriteBufferFull
from aiowt.transport.framing import FrameDecoder, decode_message
from aiowt.transport.session import Session
from tests.actors.test_service_harness import (
    Failed,
    Program,
    check_history,
    drive,
    recording,
    take_history,
)


class FakeStream:
    def __init__(self, session: FakeSession) -> None:
        self.session = session
        self.data = b""
        self.writable = True

    def write(self, data: bytes) -> None:
        self.session.check()
        self.data += data


class FakeSession:
    """Stands in for a transport `Session`: records what it is sent, or fails like one."""

    session_id = 0
    request = ConnectRequest("CONNECT", "https", "x", "/x", "", "webtransport", (), ("::1", 1))
    send_buffer_high = 1 << 20
    max_message_size = 1 << 20

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.datagrams: list[bytes] = []
        self.streams: list[FakeStream] = []
        self.closed_with: tuple[int, str] | None = None

    @property
    def closed(self) -> bool:
        return self.behaviour == "closed" or self.closed_with is not None

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def check(self) -> None:
        if self.behaviour == "closed":
            raise SessionClosedError(0, "gone")
        if self.behaviour == "full":
            raise WriteBufferFull("peer is not reading")
        if self.behaviour == "bug":
            raise RuntimeError("unexpected")

    def send_datagram(self, data: bytes) -> bool:
        self.check()
        self.datagrams.append(data)
        return True

    def open_stream(self, *, unidirectional: bool = False) -> FakeStream:
        assert unidirectional
        self.check()
        stream = FakeStream(self)
        self.streams.append(stream)
        return stream

    def messages(self) -> list[Any]:
        return [decode_message(d) for d in self.datagrams]

    def stream_messages(self) -> list[Any]:
        decoder = FrameDecoder(1 << 20)
        return [m for s in self.streams for m in decoder.feed(s.data)]


def fake(behaviour: str = "ok") -> Session:
    return cast(Session, FakeSession(behaviour))


async def test_register_up_to_the_cap_then_refuse() -> None:
    ref = SessionRegistry.start()
    try:
        assert await ask(ref, Register("a", limit=2, remote_ip="10.0.0.1", path="/x"))
        assert await ask(ref, Register("a", limit=2))  # again: still one
        assert await ask(ref, Register("b", limit=2))
        assert not await ask(ref, Register("c", limit=2))
        assert await ask(ref, Register("c"))  # no cap on this message
        assert await ask(ref, CountSessions()) == 3
        info = await ask(ref, LookupSession("a"))
        assert info is not None
        assert (info.remote_ip, info.path, info.session) == ("10.0.0.1", "/x", None)
        assert await ask(ref, LookupSession("zzz")) is None
        assert [i.session_id for i in await ask(ref, ListSessions())] == ["a", "b", "c"]
    finally:
        await ref.stop(block=False)


async def test_attach_and_unregister() -> None:
    ref = SessionRegistry.start()
    try:
        session = fake()
        assert not await ask(ref, Attach("a", session))  # not registered
        assert await ask(ref, Register("a"))
        assert await ask(ref, Attach("a", session))
        info = await ask(ref, LookupSession("a"))
        assert info is not None
        assert info.session is session
        assert await ask(ref, Unregister("a"))
        assert not await ask(ref, Unregister("a"))  # unknown: a no-op
        assert await ask(ref, CountSessions()) == 0
        # Registered twice (two MaxSessions sharing the registry): live until both release.
        assert await ask(ref, Register("b"))
        assert await ask(ref, Register("b"))
        assert await ask(ref, Unregister("b"))
        assert await ask(ref, LookupSession("b")) is not None
        assert await ask(ref, Unregister("b"))
        assert await ask(ref, LookupSession("b")) is None
    finally:
        await ref.stop(block=False)


async def _registry_with(behaviours: dict[str, str | None]) -> Any:
    ref = SessionRegistry.start()
    sessions: dict[str, FakeSession] = {}
    for sid, behaviour in behaviours.items():
        await ask(ref, Register(sid))
        if behaviour is not None:
            session = sessions[sid] = FakeSession(behaviour)
            await ask(ref, Attach(sid, cast(Session, session)))
    return ref, sessions


async def test_broadcast_reaches_everyone_whose_send_works() -> None:
    ref, sessions = await _registry_with(
        {"a": "ok", "b": "closed", "c": "full", "d": "bug", "e": None, "f": "ok"}
    )
    try:
        delivery = await ask(ref, Broadcast({"type": "hello", "n": 1}))
        assert delivery == Delivery(delivered=2, failed=3, missing=1)
        assert sessions["a"].messages() == sessions["f"].messages() == [{"type": "hello", "n": 1}]
        delivery = await ask(ref, BroadcastExcept("a", "bye"))
        assert delivery == Delivery(delivered=1, failed=3, missing=1)
        assert sessions["a"].messages() == [{"type": "hello", "n": 1}]
        assert sessions["f"].messages()[-1] == "bye"
    finally:
        await ref.stop(block=False)


async def test_stream_delivery_follows_the_slow_consumer_policy() -> None:
    ref, sessions = await _registry_with({"slow": "full", "ok": "ok"})
    try:
        delivery = await ask(ref, Broadcast("news", via="stream"))
        assert delivery == Delivery(delivered=1, failed=1, missing=0)
        # The peer that cannot keep up is closed, as OutboundChannel's policy says.
        assert sessions["slow"].closed_with is not None
        assert sessions["slow"].closed_with[0] == CloseCode.SLOW_CONSUMER
        assert sessions["ok"].closed_with is None
    finally:
        await ref.stop(block=False)


async def test_multicast_counts_unknown_ids_once() -> None:
    ref, sessions = await _registry_with({"a": "ok", "b": "ok", "c": "ok"})
    try:
        delivery = await ask(ref, Multicast(["a", "c", "c", "nobody"], [1, 2]))
        assert delivery == Delivery(delivered=2, failed=0, missing=1)
        assert [len(sessions[s].datagrams) for s in "abc"] == [1, 0, 1]
    finally:
        await ref.stop(block=False)


async def test_to_user_reaches_every_session_of_that_user() -> None:
    ref = SessionRegistry.start()
    try:
        inboxes = {}
        for session_id, user in (("a1", "ada"), ("a2", "ada"), ("b1", "bob"), ("x", "")):
            inboxes[session_id] = FakeSession()
            assert await ask(ref, Register(session_id, user=user))
            assert await ask(ref, Attach(session_id, cast(Session, inboxes[session_id])))
        assert await ask(ref, ToUser("ada", {"hi": 1})) == Delivery(delivered=2)
        assert [len(inboxes[s].datagrams) for s in ("a1", "a2", "b1", "x")] == [1, 1, 0, 0]
        assert await ask(ref, Unregister("a1"))
        assert await ask(ref, ToUser("ada", {"hi": 2})) == Delivery(delivered=1)
        assert await ask(ref, Unregister("a2"))
        assert await ask(ref, ToUser("ada", {"hi": 3})) == Delivery()  # nobody: zeros
        info = await ask(ref, LookupSession("b1"))
        assert info is not None
        assert info.user == "bob"
        with pytest.raises(UsageError):
            await ask(ref, ToUser("", {}))
        with pytest.raises(UsageError):
            await ask(ref, Register("y", user=7))  # type: ignore[arg-type]
    finally:
        await ref.stop(block=False)


async def test_stream_delivery_keeps_one_ordered_stream_per_session() -> None:
    ref, sessions = await _registry_with({"a": "ok", "b": "ok"})
    try:
        for n in range(3):
            assert await ask(ref, Broadcast({"n": n}, via="stream")) == Delivery(2, 0, 0)
        assert [len(s.streams) for s in sessions.values()] == [1, 1]
        assert sessions["a"].stream_messages() == [{"n": 0}, {"n": 1}, {"n": 2}]
        sessions["a"].streams[0].writable = False  # e.g. the peer stopped it
        await ask(ref, Broadcast({"n": 3}, via="stream"))
        assert len(sessions["a"].streams) == 2
        assert sessions["a"].stream_messages()[-1] == {"n": 3}
    finally:
        await ref.stop(block=False)


async def test_an_unencodable_broadcast_reaches_nobody() -> None:
    ref, sessions = await _registry_with({"a": "ok"})
    try:
        with pytest.raises(UsageError, match="cannot encode"):
            await ask(ref, Broadcast({"x": object()}))
        assert sessions["a"].datagrams == []
    finally:
        await ref.stop(block=False)


# --- the concurrent model check -------------------------------------------------------------

CAP = 3


class SessionsModel:
    def __init__(self) -> None:
        self.entries: dict[str, str | None] = {}  # id -> behaviour of the attached session
        self.holds: dict[str, int] = {}  # id -> registrations not yet released

    def apply(self, message: Any) -> object:
        if isinstance(message, Register):
            if message.limit is not None and not isinstance(message.limit, int):
                return Failed("UsageError")
            if message.session_id in self.entries:
                self.holds[message.session_id] += 1
                return True
            if message.limit is not None and len(self.entries) >= message.limit:
                return False
            self.entries[message.session_id] = None
            self.holds[message.session_id] = 1
            return True
        if isinstance(message, Attach):
            if message.session_id not in self.entries:
                return False
            self.entries[message.session_id] = cast(FakeSession, message.session).behaviour
            return True
        if isinstance(message, Unregister):
            if message.session_id not in self.entries:
                return False
            self.holds[message.session_id] -= 1
            if not self.holds[message.session_id]:
                del self.entries[message.session_id], self.holds[message.session_id]
            return True
        if isinstance(message, CountSessions):
            return len(self.entries)
        if isinstance(message, Broadcast):
            return self._deliver(list(self.entries), 0)
        if isinstance(message, BroadcastExcept):
            return self._deliver([s for s in self.entries if s != message.session_id], 0)
        if isinstance(message, Multicast):
            unique = list(dict.fromkeys(message.session_ids))
            known = [s for s in unique if s in self.entries]
            return self._deliver(known, len(unique) - len(known))
        return Failed("UnknownMessage")

    def _deliver(self, targets: list[str], missing: int) -> Delivery:
        delivered = failed = 0
        for sid in targets:
            behaviour = self.entries[sid]
            if behaviour is None:
                missing += 1
            elif behaviour == "ok":
                delivered += 1
            else:
                failed += 1
        return Delivery(delivered, failed, missing)

    def view(self) -> object:
        return sorted(self.entries.items(), key=lambda item: item[0])


def registry_view(actor: SessionRegistry) -> object:
    return sorted(
        (
            (sid, None if e.channel is None else cast(FakeSession, e.channel.session).behaviour)
            for sid, e in actor._entries.items()
        ),
        key=lambda item: item[0],
    )


def under_cap(view: object) -> None:
    assert isinstance(view, list)
    assert len(view) <= CAP


action = st.sampled_from(["count", "broadcast", "except", "multicast", "bad"])
session_plan = st.tuples(
    st.sampled_from(["ok", "ok", "closed", "full"]),  # how its sends go
    st.lists(action, max_size=4),
    st.booleans(),  # unregister by tell
)


def session(sid: str, plan: tuple[str, list[str], bool], others: list[str]) -> Program:
    behaviour, actions, unregister_by_tell = plan
    registered = yield Register(sid, limit=CAP), "ask"
    if registered is True:
        yield Attach(sid, fake(behaviour)), "tell"
    for act in actions:
        if act == "count":
            yield CountSessions(), "ask"
        elif act == "broadcast":
            yield Broadcast({"from": sid}), "ask"
        elif act == "except":
            yield BroadcastExcept(sid, {"from": sid}), "ask"
        elif act == "multicast":
            yield Multicast([*others[:2], "nobody"], {"from": sid}), "ask"
        else:
            yield Register(sid, limit=0.5), "ask"  # type: ignore[arg-type]
    if registered is True:
        yield Unregister(sid), "tell" if unregister_by_tell else "ask"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task_sessions=st.lists(session_plan, min_size=1, max_size=7),
    thread_sessions=st.lists(session_plan, max_size=3),
)
def test_concurrent_sessions_match_the_sequential_model(
    task_sessions: list[Any], thread_sessions: list[Any]
) -> None:
    ids = [f"s{n}" for n in range(len(task_sessions) + len(thread_sessions))]

    async def scenario() -> None:
        ref = recording(SessionRegistry, registry_view).start()
        try:
            tasks = [session(ids[n], plan, ids) for n, plan in enumerate(task_sessions)]
            offset = len(task_sessions)
            threads = [
                session(ids[offset + n], plan, ids) for n, plan in enumerate(thread_sessions)
            ]
            sents = await drive(ref, tasks, threads)
            check_history(await take_history(ref), sents, SessionsModel(), under_cap)
            assert await ask(ref, CountSessions()) == 0, "a session is still registered"
        finally:
            await ref.stop(block=False)

    asyncio.run(scenario())
