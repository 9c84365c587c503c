"""The chat example end to end: real QUIC clients on loopback, real room actors.

Covers delivery to every member of a room and only to them, order per sender, history
for late joiners, join/leave presence (abrupt disconnects included), unique names in a
room (simultaneous joins included), inbound validation, the server's
`on_connect`/`on_disconnect` hooks, the slow-consumer policy against a peer whose
process is frozen, and the demo command itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import pytest

from aiowt import Server
from aiowt.actors import ask
from aiowt.actors.redis_backend import RedisBackend
from aiowt.actors.rooms import FindRoom, GetMembers, ListRooms
from aiowt.transport import (
    CloseCode,
    CloseInfo,
    HandshakeError,
    Session,
    SessionClosedError,
    SessionContext,
    Stream,
    connect,
)
from examples.chat.server import NAME, NAME_TAKEN, ROOM, Chat, ChatConfig, ChatSession
from tests.conftest import ClientFactory, ServerFactory
from tests.redis_server import RedisServer

T = TypeVar("T")
TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]


async def within(awaitable: Awaitable[T], seconds: float = TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, seconds)


# --- an observable chat server ------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Answered by a chat session once everything queued before it is handled."""


class ObservedChatSession(ChatSession):
    by_name: ClassVar[dict[str, ObservedChatSession]] = {}

    async def on_start(self) -> None:  # type: ignore[override]
        await super().on_start()
        self.by_name[self.member.name] = self

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Ping):
            return None
        return super().on_receive(message)

    async def settled(self) -> None:
        await within(self.actor_ref.ask(Ping(), block=False))


@dataclass
class ChatHarness:
    server: Server
    chat: Chat
    connected: list[tuple[str, str]] = field(default_factory=list)
    """(room, name) of each session, recorded by an `on_connect` hook."""
    ended: asyncio.Queue[tuple[str, CloseInfo | None]] = field(default_factory=asyncio.Queue)
    """(name, how it closed) of each ended session, from an `on_disconnect` hook."""

    async def wait_ended(self, name: str) -> CloseInfo | None:
        while True:
            ended, info = await within(self.ended.get())
            if ended == name:
                return info

    def handler(self, name: str) -> ObservedChatSession:
        return ObservedChatSession.by_name[name]


ChatFactory = Callable[..., Awaitable[ChatHarness]]


@pytest.fixture
async def chat_server(make_server: ServerFactory) -> AsyncIterator[ChatFactory]:
    harnesses: list[ChatHarness] = []
    ObservedChatSession.by_name = {}

    async def start(config: ChatConfig | None = None, **options: Any) -> ChatHarness:
        chat = Chat(config)
        connected: list[tuple[str, str]] = []
        ended: asyncio.Queue[tuple[str, CloseInfo | None]] = asyncio.Queue()

        def on_connect(ctx: SessionContext) -> None:
            connected.append((ctx.get(ROOM), ctx.get(NAME)))

        async def on_disconnect(ctx: SessionContext) -> None:
            ended.put_nowait((ctx.get(NAME), ctx.close_info))

        def configure(server: Server) -> None:
            chat.install(server, handler=ObservedChatSession)
            server.on_connect.append(on_connect)
            server.on_disconnect.append(on_disconnect)

        server = await make_server(configure, **options)
        harness = ChatHarness(server, chat, connected, ended)
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        await within(harness.server.shutdown(timeout=5))
        await within(harness.chat.aclose())


# --- a chat client ------------------------------------------------------------------------------


class ChatClient:
    """A chat member over a real session: says things, reads what the server sends."""

    def __init__(self, session: Session, inbox: Stream, history: dict[str, Any]) -> None:
        self.session = session
        self.inbox = inbox
        self.history = history
        self.you: dict[str, str] = history["you"]
        self.outbox = session.open_stream()
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def join(cls, client: ClientFactory, server: Server, room: str, name: str) -> ChatClient:
        session = await client(server, f"/chat/{room}?name={quote(name)}")
        inbox = await within(session.accept_stream())
        history = await within(inbox.receive_message())
        assert history["type"] == "history"
        member = cls(session, inbox, history)
        joined = await member.next()
        assert (joined["type"], joined["id"]) == ("join", member.you["id"])
        return member

    async def next(self) -> dict[str, Any]:
        message: dict[str, Any] = await within(self.inbox.receive_message())
        self.seen.append(message)
        return message

    async def next_of(self, kind: str, **match: Any) -> dict[str, Any]:
        """The next message of type `kind` whose fields match (others are kept in `seen`)."""
        while True:
            message = await self.next()
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message

    async def saw(self, kind: str, **match: Any) -> dict[str, Any]:
        """The first message of type `kind` matching, among those seen or still to come."""
        for message in self.seen:
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message
        return await self.next_of(kind, **match)

    async def texts(self, count: int) -> list[dict[str, Any]]:
        """The next `count` chat messages (join and leave events are skipped)."""
        return [await self.next_of("message") for _ in range(count)]

    def say(self, text: str) -> None:
        self.outbox.send_message({"type": "say", "text": text})

    def send(self, message: Any) -> None:
        self.outbox.send_message(message)


# --- delivery -----------------------------------------------------------------------------------


async def test_every_member_of_a_room_gets_its_messages_and_no_one_else(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server()
    ada = await ChatClient.join(client, h.server, "lobby", "ada")
    bob = await ChatClient.join(client, h.server, "lobby", "bob")
    cy = await ChatClient.join(client, h.server, "lobby", "cy")
    dee = await ChatClient.join(client, h.server, "kitchen", "dee")
    eve = await ChatClient.join(client, h.server, "kitchen", "eve")
    assert h.connected == [
        ("lobby", "ada"),
        ("lobby", "bob"),
        ("lobby", "cy"),
        ("kitchen", "dee"),
        ("kitchen", "eve"),
    ]

    ada.say("hello lobby")
    for member in (ada, bob, cy):
        message = await member.next_of("message")
        assert message["text"] == "hello lobby"
        assert (message["from"], message["id"]) == ("ada", ada.you["id"])
        assert message["room"] == "lobby"
        assert isinstance(message["time"], float)
    # The kitchen saw nothing of it: the next thing each of them gets is the kitchen's
    # own message, posted after the lobby's had reached every lobby member.
    dee.say("hello kitchen")
    for member in (dee, eve):
        message = await member.next_of("message")
        assert (message["text"], message["from"]) == ("hello kitchen", "dee")
        assert all(m.get("room") in (None, "kitchen") for m in member.seen)
        assert all(m.get("text") != "hello lobby" for m in member.seen)
    assert await within(ask(h.chat.rooms, ListRooms())) == {"lobby": 3, "kitchen": 2}


async def test_each_senders_messages_arrive_in_order_with_increasing_seq(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server()
    ada = await ChatClient.join(client, h.server, "race", "ada")
    bob = await ChatClient.join(client, h.server, "race", "bob")
    cy = await ChatClient.join(client, h.server, "race", "cy")
    count = 60
    for n in range(count):
        # Interleaved sends from two sessions (two connections): the room orders them.
        ada.say(f"ada {n}")
        bob.say(f"bob {n}")
    for member in (ada, bob, cy):
        messages = await member.texts(2 * count)
        for sender in ("ada", "bob"):
            assert [m["text"] for m in messages if m["from"] == sender] == [
                f"{sender} {n}" for n in range(count)
            ]
        seqs = [m["seq"] for m in messages]
        # Increasing without gaps: one total order, the room's, with nothing lost.
        assert seqs == list(range(seqs[0], seqs[0] + 2 * count))


async def test_a_late_joiner_gets_the_last_messages_and_the_member_list(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server(ChatConfig(history_size=5))
    ada = await ChatClient.join(client, h.server, "lobby", "ada")
    for n in range(8):
        ada.say(f"m{n}")
    sent = await ada.texts(8)
    bob = await ChatClient.join(client, h.server, "lobby", "bob")
    history = bob.history
    assert history["room"] == "lobby"
    assert history["you"] == {"id": bob.you["id"], "name": "bob"}
    assert [m["name"] for m in history["members"]] == ["ada", "bob"]
    assert history["messages"] == sent[3:]
    # Ada hears of bob; bob hears what is said from then on, nothing twice.
    assert (await ada.next_of("join"))["name"] == "bob"
    ada.say("welcome")
    assert (await bob.next_of("message"))["text"] == "welcome"


# --- presence -----------------------------------------------------------------------------------


async def test_leaves_are_announced_and_the_room_goes_with_its_last_member(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server()
    ada = await ChatClient.join(client, h.server, "lobby", "ada")
    bob = await ChatClient.join(client, h.server, "lobby", "bob")
    cy = await ChatClient.join(client, h.server, "lobby", "cy")
    # An abrupt disconnect: the connection goes, with no WebTransport close.
    await cy.session.abort()
    info = await h.wait_ended("cy")
    assert info is not None
    assert (info.code, info.by_peer) == (CloseCode.ABORTED, True)
    for member in (ada, bob):
        left = await member.next_of("leave", name="cy")
        assert (left["id"], left["reason"]) == (cy.you["id"], "disconnected")
    # A clean close.
    await bob.session.aclose()
    info = await h.wait_ended("bob")
    assert info is not None
    assert (info.code, info.by_peer) == (CloseCode.NORMAL, True)
    assert (await ada.next_of("leave", name="bob"))["reason"] == "left"
    room = await within(ask(h.chat.rooms, FindRoom("lobby")))
    assert room is not None
    assert [m.name for m in await within(ask(room, GetMembers()))] == ["ada"]
    await ada.session.aclose()
    await h.wait_ended("ada")
    # The leave was told before the hook ran, so the manager has handled it by now.
    assert await within(ask(h.chat.rooms, ListRooms())) == {}


# --- unique names -------------------------------------------------------------------------------


async def joined_or_closed(session: Session) -> dict[str, Any] | CloseInfo:
    """The session's `history` if it got into its room, else how it was closed."""
    try:
        inbox = await within(session.accept_stream())
    except SessionClosedError:
        return await within(session.wait_closed())
    history: dict[str, Any] = await within(inbox.receive_message())
    return history


async def test_of_simultaneous_joins_with_one_name_exactly_one_gets_in(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server()
    bob = await ChatClient.join(client, h.server, "lobby", "bob")
    count = 6
    # Six sessions ask for "ada" at once: accepted, each handler asks the room manager.
    sessions = await within(
        asyncio.gather(*(client(h.server, "/chat/lobby?name=ada") for _ in range(count)))
    )
    outcomes = await within(asyncio.gather(*(joined_or_closed(s) for s in sessions)))
    joined = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, CloseInfo)]
    assert len(joined) == 1, outcomes
    assert joined[0]["you"]["name"] == "ada"
    assert len(refused) == count - 1
    for info in refused:
        assert (info.code, info.reason) == (NAME_TAKEN, "the name 'ada' is taken in room 'lobby'")
        assert info.by_peer
    room = await within(ask(h.chat.rooms, FindRoom("lobby")))
    assert room is not None
    assert [m.name for m in await within(ask(room, GetMembers()))] == ["bob", "ada"]
    # Bob saw one ada come in, and nobody leave: the refused never were members.
    assert (await bob.next_of("join"))["name"] == "ada"
    bob.say("sync")
    await bob.next_of("message", text="sync")
    assert [m["type"] for m in bob.seen].count("leave") == 0
    # The name is per room: another room's ada is fine.
    await ChatClient.join(client, h.server, "kitchen", "ada")


async def test_a_name_is_unique_across_servers_sharing_redis(
    chat_server: ChatFactory, client: ClientFactory, redis_server: RedisServer
) -> None:
    url = redis_server.url(timeout=2.0)
    first = await chat_server(backend=RedisBackend.from_url(url))
    second = await chat_server(backend=RedisBackend.from_url(url))
    # One "ada" on each server at once: the room's script in Redis admits one.
    sessions = await within(
        asyncio.gather(
            client(first.server, "/chat/lobby?name=ada"),
            client(second.server, "/chat/lobby?name=ada"),
        )
    )
    outcomes = await within(asyncio.gather(*(joined_or_closed(s) for s in sessions)))
    joined = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, CloseInfo)]
    assert len(joined) == 1, outcomes
    assert [(i.code, i.reason) for i in refused] == [
        (NAME_TAKEN, "the name 'ada' is taken in room 'lobby'")
    ]
    # Another name on the other server is fine, and sees the one ada.
    bob = await ChatClient.join(client, second.server, "lobby", "bob")
    assert [m["name"] for m in bob.history["members"]] == ["ada", "bob"]


async def test_a_name_is_free_again_once_its_holder_left(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server()
    ada = await ChatClient.join(client, h.server, "lobby", "ada")
    bob = await ChatClient.join(client, h.server, "lobby", "bob")
    second = await client(h.server, "/chat/lobby?name=ada")
    info = await joined_or_closed(second)
    assert isinstance(info, CloseInfo)
    assert info.code == NAME_TAKEN
    await ada.session.aclose()
    await bob.next_of("leave", name="ada")
    again = await ChatClient.join(client, h.server, "lobby", "ada")
    assert again.you["id"] != ada.you["id"]
    assert [m["name"] for m in again.history["members"]] == ["bob", "ada"]


# --- validation ---------------------------------------------------------------------------------


async def test_bad_room_or_name_is_refused_at_the_handshake(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server(ChatConfig(max_name_length=8))
    for path in ("/chat/no%20spaces", "/chat/" + "x" * 65, "/chat/ok?name=" + "n" * 9):
        with pytest.raises(HandshakeError) as refused:
            await client(h.server, path)
        assert refused.value.status == 400
    guest = await ChatClient.join(client, h.server, "ok", "")
    assert guest.you["name"].startswith("guest-")


async def test_content_errors_get_an_error_back_and_the_session_goes_on(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server(ChatConfig(max_text_length=10))
    ada = await ChatClient.join(client, h.server, "lobby", "ada")
    ada.say("x" * 11)
    assert (await ada.next_of("error"))["code"] == "text_too_long"
    ada.say("   ")
    assert (await ada.next_of("error"))["code"] == "empty_text"
    ada.send({"type": "dance"})
    error = await ada.next_of("error")
    assert error["code"] == "unknown_type"
    assert "dance" in error["error"]
    ada.say("x" * 10)
    assert (await ada.next_of("message"))["text"] == "x" * 10
    assert all(m["type"] != "message" or m["text"] == "x" * 10 for m in ada.seen)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ([1, 2], "string 'type'"),
        ({"text": "no type"}, "string 'type'"),
        ({"type": "say", "text": 42}, "string 'text'"),
    ],
)
async def test_malformed_messages_close_the_session_with_protocol_error(
    chat_server: ChatFactory, client: ClientFactory, message: Any, reason: str
) -> None:
    h = await chat_server()
    ada = await ChatClient.join(client, h.server, "lobby", "ada")
    bob = await ChatClient.join(client, h.server, "lobby", "bob")
    bob.send(message)
    info = await within(bob.session.wait_closed())
    assert info.code == CloseCode.PROTOCOL_ERROR
    assert reason in info.reason
    left = await ada.next_of("leave", name="bob")
    assert left["reason"] == "protocol error"


# --- datagrams ----------------------------------------------------------------------------------


async def test_typing_signals_go_to_the_others_as_datagrams(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server()
    ada = await ChatClient.join(client, h.server, "lobby", "ada")
    bob = await ChatClient.join(client, h.server, "lobby", "bob")
    ada.session.send_datagram_message({"type": "typing"})
    typing = await within(bob.session.receive_datagram_message())
    assert (typing["type"], typing["from"], typing["id"]) == ("typing", "ada", ada.you["id"])
    assert "seq" not in typing
    # Not echoed to its sender, and not kept in the history.
    await h.handler("ada").settled()
    assert h.handler("ada").outbound.datagrams_sent == 0
    assert h.handler("bob").outbound.datagrams_sent == 1
    late = await ChatClient.join(client, h.server, "lobby", "cy")
    assert late.history["messages"] == []


# --- a peer that cannot keep up -----------------------------------------------------------------

# A chat member in a process of its own, so that the test can freeze it (SIGSTOP): its
# socket is no longer read, nothing it received is acknowledged, and the server's data
# for it piles up unacknowledged, exactly as with a hung browser tab.
STALLED_MEMBER = """
import asyncio, sys
from aiowt.transport import connect

async def main():
    session = await connect(sys.argv[1], cert_hash=sys.argv[2])
    stream = await session.accept_stream()
    assert (await stream.receive_message())["type"] == "history"
    print("joined", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def frozen_member(h: ChatHarness, room: str, name: str) -> AsyncIterator[None]:
    host, port = h.server.address
    assert h.server.certificate is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STALLED_MEMBER,
        f"https://{host}:{port}/chat/{room}?name={name}",
        h.server.certificate.sha256_hex,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        assert await within(process.stdout.readline(), 20) == b"joined\n"
        process.send_signal(signal.SIGSTOP)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await within(process.communicate())


async def test_a_frozen_peer_slows_no_one_and_is_closed_as_a_slow_consumer(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    bound = 64 * 1024
    h = await chat_server(ChatConfig(max_outbound_buffer=bound, max_text_length=4000))
    async with frozen_member(h, "busy", "frozen"):
        ada = await ChatClient.join(client, h.server, "busy", "ada")
        bob = await ChatClient.join(client, h.server, "busy", "bob")
        text = "x" * 3000
        # Phase 1: about 47 KB for the frozen peer, under its bound but well over the
        # stream's low-water mark: a room that waited for members to drain would stall here.
        for n in range(15):
            ada.say(f"{n} {text}")
        for member in (ada, bob):
            assert [m["text"].split()[0] for m in await member.texts(15)] == [
                str(n) for n in range(15)
            ]
        room = await within(ask(h.chat.rooms, FindRoom("busy")))
        assert room is not None
        names = [m.name for m in await within(ask(room, GetMembers()))]
        assert names == ["frozen", "ada", "bob"]  # still a member: nobody waited for it
        assert h.ended.empty()
        # Phase 2: past the bound. The others read as they go, so their buffers drain;
        # the frozen peer's only grows, until it is closed. The others get everything.
        for n in range(15, 40):
            ada.say(f"{n} {text}")
            for member in (ada, bob):
                message = await member.next_of("message")
                assert message["text"].split()[0] == str(n)
        info = await h.wait_ended("frozen")
        assert info is not None
        assert info.code == CloseCode.SLOW_CONSUMER
        assert not info.by_peer
        assert "slow consumer" in info.reason
        for member in (ada, bob):
            left = await member.saw("leave", name="frozen")
            assert left["reason"] == "slow consumer"
        assert [m.name for m in await within(ask(room, GetMembers()))] == ["ada", "bob"]


async def test_datagrams_for_a_frozen_peer_are_dropped_and_counted(
    chat_server: ChatFactory, client: ClientFactory
) -> None:
    h = await chat_server(ChatConfig(max_outbound_buffer=64 * 1024))
    async with frozen_member(h, "busy", "frozen"):
        ada = await ChatClient.join(client, h.server, "busy", "ada")
        bob = await ChatClient.join(client, h.server, "busy", "bob")
        frozen = h.handler("frozen")
        sent = 0
        # Far more typing signals than a connection's queue of unsent datagrams holds
        # (1024), in bursts paced by a chat message each, so that ada's own queue (on a
        # healthy connection) never fills.
        for burst in range(30):
            for _ in range(100):
                sent += ada.session.send_datagram_message({"type": "typing"})
            ada.say(f"burst {burst}")
            await ada.next_of("message", text=f"burst {burst}")
        assert sent == 3000
        assert (await bob.next_of("message", text="burst 29"))["from"] == "ada"
        await frozen.settled()
        assert frozen.outbound.datagrams_dropped > 0
        assert frozen.outbound.datagrams_sent + frozen.outbound.datagrams_dropped <= sent
        # Datagrams are dropped, never a reason to close: the frozen peer is still in.
        assert not frozen.session.closed
        assert not frozen.outbound.slow
        # Bob reads his: nothing was dropped for him at the server.
        assert h.handler("bob").outbound.datagrams_dropped == 0


# --- the demo command ---------------------------------------------------------------------------


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        response = await within(reader.read())
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_demo_command_serves_the_page_and_the_chat(client: ClientFactory) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.chat",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-host",
        "127.0.0.1",
        "--http-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    try:
        assert process.stdout is not None
        printed: list[str] = []
        # The page's address is printed as a URL a person can click.
        while not (line := (await within(process.stdout.readline(), 20)).decode()).startswith(
            "chat page on http://localhost:"
        ):
            assert line, f"the demo exited: {''.join(printed)}"
            printed.append(line)
        http_port = int(line.split("http://localhost:")[1].split("/")[0])
        status, page = await http_get(http_port, "/")
        assert status == 200
        assert b"aiowt chat" in page
        status, script = await http_get(http_port, "/chat.js")
        assert status == 200
        assert b"WebTransport" in script
        assert (await http_get(http_port, "/../server.py"))[0] == 404
        status, body = await http_get(http_port, "/config.json")
        config = json.loads(body)
        assert config["path"] == "/chat/"
        url = f"https://127.0.0.1:{config['port']}/chat/lobby?name=py"
        session = await within(connect(url, cert_hash=config["certificateHashes"][0]))
        try:
            inbox = await within(session.accept_stream())
            assert (await within(inbox.receive_message()))["type"] == "history"
            session.open_stream().send_message({"type": "say", "text": "hello demo"})
            while (message := await within(inbox.receive_message()))["type"] != "message":
                pass
            assert (message["from"], message["text"]) == ("py", "hello demo")
        finally:
            await within(session.aclose())
        process.send_signal(signal.SIGTERM)
        assert await within(process.wait()) == 0
    finally:
        if process.returncode is None:
            process.kill()
        await within(process.communicate())
