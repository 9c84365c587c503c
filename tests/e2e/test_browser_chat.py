"""The chat demo's own page in headless Chromium: two tabs and a Python client in one room.

The page is the demo's (`examples/chat/static`), served by the demo's HTTP server
(`examples/chat/web.py`), and driven the way a person uses it: type, press send, read
the log. The test drives Chromium through its DevTools protocol over a pipe
(`--remote-debugging-pipe`: NUL-terminated JSON on the browser's fds 3 and 4), so the
page needs no test hooks, and every wait is bounded inside the page itself.

Besides the chat itself: nothing stale stays on the page after Leave or the server's
close, and the same room can be joined again; a taken name, a bad room or name (checked
by the page before connecting, with the server's own words) and a refusal the page could
not foresee each say why; and the layout at 1200 and 400 px wide (no horizontal
overflow, members in view), with screenshots in `build/screenshots/`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import re
import signal
import struct
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import pytest

from aiowt import Server
from aiowt.transport import CloseCode, Session
from examples.chat.server import Chat, ChatConfig, ChatGate, ChatSession
from examples.chat.web import STATIC_DIR, ChatWebServer
from tests.browser import CHROMIUM_FLAGS, require_chromium
from tests.conftest import ClientFactory, ServerFactory

TIMEOUT = 20.0
PAGE_TIMEOUT_MS = 15_000
BROWSER_FLAGS = (
    *CHROMIUM_FLAGS,
    # Two tabs side by side must both run at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--remote-debugging-pipe",
)


def require_vendor_client() -> None:
    if not (STATIC_DIR / "vendor" / "aiowt-client.js").is_file():
        message = (
            "the chat page's client is not built:"
            " run `make examples/chat/static/vendor/aiowt-client.js`"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class DevToolsError(Exception):
    pass


class DevTools:
    """A DevTools protocol client on Chromium's pipe; flattened sessions, one per tab."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.WriteTransport) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: dict[str | None, asyncio.Queue[dict[str, Any]]] = defaultdict(asyncio.Queue)
        self.console: list[str] = []
        self._pump = asyncio.get_running_loop().create_task(self._read())

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        self._writer.write(json.dumps(message).encode() + b"\0")
        return await asyncio.wait_for(future, TIMEOUT)

    async def event(self, session: str, method: str) -> dict[str, Any]:
        while True:
            event = await asyncio.wait_for(self.events[session].get(), TIMEOUT)
            if event["method"] == method:
                return event

    async def _read(self) -> None:
        try:
            while True:
                raw = await self._reader.readuntil(b"\0")
                message = json.loads(raw[:-1])
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is None or future.done():
                        continue
                    if "error" in message:
                        future.set_exception(DevToolsError(message["error"]))
                    else:
                        future.set_result(message.get("result", {}))
                    continue
                if message.get("method") == "Runtime.consoleAPICalled":
                    args = message["params"]["args"]
                    self.console.append(" ".join(str(a.get("value", a)) for a in args))
                elif message.get("method") == "Runtime.exceptionThrown":
                    self.console.append(str(message["params"]["exceptionDetails"]))
                self.events[message.get("sessionId")].put_nowait(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            error = DevToolsError("the browser closed its DevTools pipe")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        self._writer.close()


class Tab:
    """One page of the browser, in a window of its own."""

    def __init__(self, devtools: DevTools, target: str, session: str) -> None:
        self.devtools = devtools
        self.target = target
        self.session = session

    @classmethod
    async def open(cls, devtools: DevTools, url: str, *, before_load: str = "") -> Tab:
        """A new window on `url`; `before_load` (JavaScript) runs before the page's own."""
        target = (
            await devtools.call("Target.createTarget", {"url": "about:blank", "newWindow": True})
        )["targetId"]
        attached = await devtools.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )
        tab = cls(devtools, target, attached["sessionId"])
        await devtools.call("Runtime.enable", session=tab.session)
        await devtools.call("Page.enable", session=tab.session)
        if before_load:
            await devtools.call(
                "Page.addScriptToEvaluateOnNewDocument",
                {"source": before_load},
                session=tab.session,
            )
        await devtools.call("Page.navigate", {"url": url}, session=tab.session)
        await devtools.event(tab.session, "Page.loadEventFired")
        return tab

    async def evaluate(self, expression: str) -> Any:
        result = await self.devtools.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"{text}; console: {self.devtools.console[-5:]}")
        return result["result"].get("value")

    async def wait_for(self, predicate: str) -> Any:
        """Wait, inside the page, until the JS expression `predicate` is truthy; bounded."""
        return await self.evaluate(
            f"""new Promise((resolve, reject) => {{
                const predicate = () => ({predicate});
                const check = () => {{
                    let value;
                    try {{ value = predicate(); }} catch (error) {{ return; }}
                    if (value) {{ observer.disconnect(); clearTimeout(timer); resolve(value); }}
                }};
                const observer = new MutationObserver(check);
                observer.observe(document.documentElement,
                    {{subtree: true, childList: true, attributes: true, characterData: true}});
                const timer = setTimeout(() => {{
                    observer.disconnect();
                    reject(new Error("timed out waiting for " + {json.dumps(predicate)} +
                        "; page state " + document.body.dataset.state + ": " +
                        document.getElementById("status").textContent));
                }}, {PAGE_TIMEOUT_MS});
                check();
            }})"""
        )

    async def say(self, text: str) -> None:
        """Type `text` into the message box (an input event: "typing") and press Send."""
        await self.evaluate(
            f"""(() => {{
                const input = document.getElementById("text");
                input.value = {json.dumps(text)};
                input.dispatchEvent(new Event("input"));
                document.getElementById("send").click();
            }})()"""
        )

    async def wait_for_message(self, sender: str, text: str) -> None:
        await self.wait_for(
            f"""[...document.querySelectorAll("#log li.message")].some((item) =>
                item.dataset.from === {json.dumps(sender)} &&
                item.querySelector(".text").textContent === {json.dumps(text)})"""
        )

    async def close(self) -> None:
        await self.devtools.call("Target.closeTarget", {"targetId": self.target})


def _high_fd(fd: int) -> int:
    # Chromium reads fd 3 and writes fd 4; ours must be other numbers for bash to map them.
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[DevTools]:
    """Headless Chromium with DevTools on a pipe; its process group is killed afterwards."""
    binary = require_chromium()
    commands_read, commands_write = map(_high_fd, os.pipe())
    replies_read, replies_write = map(_high_fd, os.pipe())
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="aiowt-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            # bash, not sh: dash cannot redirect from file descriptors above 9.
            "bash",
            "-c",
            f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write}',
            binary,
            *BROWSER_FLAGS,
            f"--user-data-dir={profile}",
            pass_fds=(commands_read, replies_write),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(commands_read)
        os.close(replies_write)
        reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(replies_read, "rb", 0)
        )
        write_transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(commands_write, "wb", 0)
        )
        devtools = DevTools(reader, write_transport)
        try:
            yield devtools
        finally:
            await devtools.close()
            read_transport.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), 10)


async def join_as_python(client: ClientFactory, server: Server) -> tuple[Session, Any]:
    session = await client(server, "/chat/browsers?name=py")
    inbox = await asyncio.wait_for(session.accept_stream(), TIMEOUT)
    history = await asyncio.wait_for(inbox.receive_message(), TIMEOUT)
    assert history["type"] == "history"
    await next_of(inbox, "join", name="py")
    return session, inbox


async def next_of(inbox: Any, kind: str, **match: Any) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = await asyncio.wait_for(inbox.receive_message(), TIMEOUT)
        if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
            return message


async def test_two_browser_tabs_and_a_python_client_chat_in_one_room(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    require_chromium()
    require_vendor_client()
    chat = Chat()
    server = await make_server(chat.install)
    assert server.certificate is not None
    config = chat.web_config(server.address[1], (server.certificate.sha256_hex,))
    try:
        async with ChatWebServer(config, host="127.0.0.1", port=0) as web, browser() as devtools:
            py, inbox = await join_as_python(client, server)
            page = f"http://127.0.0.1:{web.address[1]}/?room=browsers&name="
            ada = await Tab.open(devtools, page + "ada")
            bob = await Tab.open(devtools, page + "bob")
            for tab in (ada, bob):
                await tab.wait_for('document.body.dataset.state === "joined"')
            # Presence reaches the Python member and the pages' member lists.
            joined = {(await next_of(inbox, "join"))["name"] for _ in range(2)}
            assert joined == {"ada", "bob"}
            await ada.wait_for('document.getElementById("members").textContent.includes("bob")')

            await ada.say("hello from ada")
            await bob.wait_for_message("ada", "hello from ada")
            assert (await next_of(inbox, "message"))["text"] == "hello from ada"
            # Ada typed: the others got a typing signal as a datagram.
            typing = await asyncio.wait_for(py.receive_datagram_message(), TIMEOUT)
            assert (typing["type"], typing["from"]) == ("typing", "ada")

            await bob.say("hi ada, bob here")
            await ada.wait_for_message("bob", "hi ada, bob here")
            message = await next_of(inbox, "message")
            assert (message["from"], message["text"]) == ("bob", "hi ada, bob here")

            py.open_stream().send_message({"type": "say", "text": "python says hi"})
            for tab in (ada, bob):
                await tab.wait_for_message("py", "python says hi")

            # Closing a tab ends its session: the room announces the leave.
            await ada.close()
            left = await next_of(inbox, "leave", name="ada")
            assert left["reason"] in ("left", "disconnected")
            await bob.wait_for('document.getElementById("log").textContent.includes("ada left")')
    finally:
        await server.shutdown(timeout=5)
        await chat.aclose()


# --- the page's rough edges ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "screenshots"
KICKED = 0x4100
"""The close code the tests kick a member with (the chat's own is `NAME_TAKEN`, 0x4001)."""


@dataclass(frozen=True)
class Kick:
    """Told to a chat session: the server closes it with `code` and `reason`."""

    code: int
    reason: str


class KickableChatSession(ChatSession):
    by_name: ClassVar[dict[str, KickableChatSession]] = {}

    async def on_start(self) -> None:  # type: ignore[override]
        await super().on_start()
        if self.room is not None:
            self.by_name[self.member.name] = self

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Kick):
            self.close(message.code, message.reason)
            return None
        return super().on_receive(message)


@dataclass
class ChatPage:
    """A chat server, the page's HTTP server and a browser, for one test."""

    server: Server
    chat: Chat
    web: ChatWebServer
    devtools: DevTools

    def url(self, **params: str) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"http://127.0.0.1:{self.web.address[1]}/{query}"

    async def open(self, **params: str) -> Tab:
        return await Tab.open(self.devtools, self.url(**params))


@contextlib.asynccontextmanager
async def chat_page(
    make_server: ServerFactory,
    config: ChatConfig | None = None,
    rules: ChatGate | None = None,
) -> AsyncIterator[ChatPage]:
    """`rules`: the gate whose rules the page is told (default: the server's own)."""
    require_chromium()
    require_vendor_client()
    KickableChatSession.by_name = {}
    chat = Chat(config)
    server = await make_server(lambda s: chat.install(s, handler=KickableChatSession))
    assert server.certificate is not None
    web_config = chat.web_config(server.address[1], (server.certificate.sha256_hex,))
    if rules is not None:
        web_config.rules = rules.rules()
    try:
        async with (
            ChatWebServer(web_config, host="127.0.0.1", port=0) as web,
            browser() as devtools,
        ):
            yield ChatPage(server, chat, web, devtools)
    finally:
        await server.shutdown(timeout=5)
        await chat.aclose()


# What the page shows of its session: everything that must not stay stale.
PAGE_VIEW = """(() => {
    const $ = (id) => document.getElementById(id);
    return {
        state: document.body.dataset.state,
        status: $("status").textContent,
        disabled: ["text", "send", "leave"].filter((id) => $(id).disabled),
        members: [...$("members").children].map((item) => item.textContent),
        typing: $("typing").textContent,
        joinForm: !$("join-form").hidden && !$("join").disabled,
        chat: !$("chat").hidden,
        heading: $("room-name").textContent,
    };
})()"""

# Keeps a record of the page's pending timers (id -> delay), to show none is left behind.
TRACK_TIMERS = """(() => {
    const pending = window.pendingTimers = new Map();
    const set = window.setTimeout.bind(window);
    const clear = window.clearTimeout.bind(window);
    window.setTimeout = (callback, delay, ...args) => {
        const id = set((...a) => { pending.delete(id); callback(...a); }, delay, ...args);
        pending.set(id, delay);
        return id;
    };
    window.clearTimeout = (id) => { pending.delete(id); clear(id); };
})()"""
# The page's own timers: `wait_for`'s timeout is the test's, not the page's.
PAGE_TIMERS = f"[...window.pendingTimers.values()].filter((ms) => ms < {PAGE_TIMEOUT_MS})"


async def join_in_page(tab: Tab, room: str, name: str) -> None:
    """Fill in the join form and press Join, as a person would."""
    await tab.evaluate(
        f"""(() => {{
            document.getElementById("room").value = {json.dumps(room)};
            document.getElementById("name").value = {json.dumps(name)};
            document.getElementById("join").click();
        }})()"""
    )


def assert_ended(view: dict[str, Any]) -> None:
    """Nothing of the ended session stays as if it were live; the join form is back."""
    assert view["disabled"] == ["text", "send", "leave"], view
    assert view["members"] == [], view
    assert view["typing"] == "", view
    assert view["joinForm"], view


async def test_without_webtransport_the_page_chats_over_websocket(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    require_chromium()
    require_vendor_client()
    chat = Chat()
    server = await make_server(chat.install, websocket=True, websocket_port=0, websocket_tls=False)
    assert server.certificate is not None
    config = chat.web_config(server.address[1], (server.certificate.sha256_hex,))
    assert config.websocket_port == server.websocket_address[1]
    try:
        async with ChatWebServer(config, host="127.0.0.1", port=0) as web, browser() as devtools:
            py, inbox = await join_as_python(client, server)
            page = f"http://127.0.0.1:{web.address[1]}/?room=browsers&name="
            # A browser without WebTransport (Safari before 26.4): the page falls back.
            hidden = "delete window.WebTransport;"
            ada = await Tab.open(devtools, page + "ada", before_load=hidden)
            bob = await Tab.open(devtools, page + "bob", before_load=hidden)
            for tab in (ada, bob):
                await tab.wait_for('document.body.dataset.state === "joined"')
                assert await tab.evaluate("document.body.dataset.transport") == "websocket"
                status = await tab.evaluate('document.getElementById("status").textContent')
                assert status.endswith("(over WebSocket)")
            assert {s.request.transport for s in server.sessions} == {
                "webtransport",  # the Python member
                "websocket",
            }
            joined = {(await next_of(inbox, "join"))["name"] for _ in range(2)}
            assert joined == {"ada", "bob"}
            await ada.say("hello over tcp")
            await bob.wait_for_message("ada", "hello over tcp")
            assert (await next_of(inbox, "message"))["text"] == "hello over tcp"
            # Typing signals are datagrams: over WebSocket they still arrive.
            typing = await asyncio.wait_for(py.receive_datagram_message(), TIMEOUT)
            assert (typing["type"], typing["from"]) == ("typing", "ada")
            py.open_stream().send_message({"type": "say", "text": "python over quic"})
            for tab in (ada, bob):
                await tab.wait_for_message("py", "python over quic")
            await ada.close()
            left = await next_of(inbox, "leave", name="ada")
            assert left["reason"] in ("left", "disconnected")
    finally:
        await server.shutdown(timeout=5)
        await chat.aclose()


async def test_after_leave_nothing_stale_stays_and_the_room_can_be_joined_again(
    make_server: ServerFactory,
) -> None:
    async with chat_page(make_server) as page:
        ada = await page.open(room="stale", name="ada")
        await ada.wait_for('document.body.dataset.state === "joined"')
        await ada.evaluate(TRACK_TIMERS)
        bob = await page.open(room="stale", name="bob")
        await bob.wait_for('document.body.dataset.state === "joined"')
        await ada.wait_for('document.getElementById("members").textContent.includes("bob")')
        # Bob types: ada's typing line shows it, with a timer to clear it later.
        await bob.say("hi")
        await ada.wait_for('document.getElementById("typing").textContent.includes("bob")')
        view = await ada.evaluate(PAGE_VIEW)
        assert view["disabled"] == []
        assert view["members"] == ["ada", "bob"]
        assert len(await ada.evaluate(PAGE_TIMERS)) == 1

        await ada.evaluate('document.getElementById("leave").click()')
        await ada.wait_for('document.body.dataset.state === "closed"')
        view = await ada.evaluate(PAGE_VIEW)
        assert_ended(view)
        assert view["status"] == "closed: left (code 0)"
        assert view["heading"] == "Left stale"
        assert await ada.evaluate(PAGE_TIMERS) == []  # the typing line's timer is gone
        await bob.wait_for('document.getElementById("log").textContent.includes("ada left")')
        await bob.wait_for('document.getElementById("members").children.length === 1')

        # The join form works again: the same room, the same name (free again).
        await join_in_page(ada, "stale", "ada")
        await ada.wait_for('document.body.dataset.state === "joined"')
        await ada.wait_for('document.getElementById("members").children.length === 2')
        view = await ada.evaluate(PAGE_VIEW)
        assert (view["disabled"], view["typing"], view["heading"]) == ([], "", "In stale")
        assert sorted(view["members"]) == ["ada", "bob"]
        await ada.say("back again")
        await bob.wait_for_message("ada", "back again")
        await ada.wait_for_message("ada", "back again")


async def test_after_the_server_closes_the_session_nothing_stale_stays(
    make_server: ServerFactory,
) -> None:
    async with chat_page(make_server) as page:
        ada = await page.open(room="kick", name="ada")
        bob = await page.open(room="kick", name="bob")
        for tab in (ada, bob):
            await tab.wait_for('document.getElementById("members").children.length === 2')
        await bob.evaluate(TRACK_TIMERS)
        await ada.say("typing before the kick")
        await bob.wait_for('document.getElementById("typing").textContent.includes("ada")')

        # The server closes bob's session (a moderator's kick, from Python).
        KickableChatSession.by_name["bob"].actor_ref.tell(Kick(KICKED, "kicked by a test"))
        await bob.wait_for('document.body.dataset.state === "closed"')
        view = await bob.evaluate(PAGE_VIEW)
        assert_ended(view)
        assert view["status"] == "closed: kicked by a test (code 0x4100)"
        assert await bob.evaluate(PAGE_TIMERS) == []
        await ada.wait_for('document.getElementById("members").children.length === 1')

        # The server shuts down: ada's page says so.
        await page.server.shutdown(timeout=5)
        await ada.wait_for('document.body.dataset.state === "closed"')
        view = await ada.evaluate(PAGE_VIEW)
        assert_ended(view)
        code = f"0x{CloseCode.GOING_AWAY:x}"
        assert view["status"] == f"closed: server shutting down (code {code})"


async def test_a_taken_name_is_refused_with_the_servers_reason_in_the_page(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    async with chat_page(make_server) as page:
        py = await client(page.server, "/chat/dup?name=ada")
        await asyncio.wait_for(py.accept_stream(), TIMEOUT)
        tab = await page.open(room="dup", name="ada")
        await tab.wait_for('document.body.dataset.state === "refused"')
        view = await tab.evaluate(PAGE_VIEW)
        assert view["status"] == (
            "could not join: the name 'ada' is taken in room 'dup' (code 0x4001)"
        )
        assert view["joinForm"]
        assert not view["chat"]  # never joined: nothing of a session was shown
        assert page.chat.gate.requests == 2
        # Another name gets in.
        await join_in_page(tab, "dup", "ada2")
        await tab.wait_for('document.body.dataset.state === "joined"')
        await tab.wait_for('document.getElementById("members").children.length === 2')
        assert (await tab.evaluate(PAGE_VIEW))["members"] == ["ada", "ada2"]


# Room names the server takes or refuses; the page's copy of the rule must agree.
ROOM_SAMPLES = (
    "lobby",
    "a.b-c_d",
    "café",
    "комната",
    "部屋",
    "x" * 64,
    "x" * 65,
    "",
    "no spaces",
    "a/b",
    "a?b",
    "tab\tname",
    "emoji😀",
)


async def test_a_bad_room_or_name_is_refused_by_the_page_before_connecting(
    make_server: ServerFactory,
) -> None:
    async with chat_page(make_server, ChatConfig(max_name_length=8)) as page:
        gate = page.chat.gate
        tab = await page.open(room="no spaces", name="ada")
        await tab.wait_for('document.body.dataset.state === "refused"')
        view = await tab.evaluate(PAGE_VIEW)
        assert view["status"] == f"cannot join: {gate.room_reason}"
        assert view["joinForm"]
        await join_in_page(tab, "ok", "n" * 9)
        await tab.wait_for(
            f"document.getElementById('status').textContent.includes({json.dumps(gate.name_reason)})"
        )
        assert gate.name_reason == "names are 1-8 printable characters"
        assert (await tab.evaluate(PAGE_VIEW))["state"] == "refused"
        # Nothing reached the server: the page never connected.
        assert gate.requests == 0

        # The page's copy of the room rule, from /config.json, agrees with the server's.
        verdicts = await tab.evaluate(
            f"""fetch("/config.json").then((r) => r.json()).then((config) => {{
                const rule = new RegExp(`^(?:${{config.rules.room.pattern}})$`, "u");
                return {json.dumps(ROOM_SAMPLES)}.map((room) => rule.test(room));
            }})"""
        )
        room_rule = re.compile(r"[\w.\-]{1,64}")
        assert verdicts == [bool(room_rule.fullmatch(room)) for room in ROOM_SAMPLES]

        # A good room with a Unicode name gets in: the page is not stricter than the server.
        await join_in_page(tab, "café", "äda")
        await tab.wait_for('document.body.dataset.state === "joined"')
        assert gate.requests == 1


async def test_a_refusal_the_page_cannot_foresee_still_says_something_useful(
    make_server: ServerFactory,
) -> None:
    # The page is told older, looser rules than the server's: names up to 32 characters.
    looser = ChatGate(ChatConfig(max_name_length=32))
    async with chat_page(make_server, ChatConfig(max_name_length=8), rules=looser) as page:
        tab = await page.open(room="ok", name="n" * 12)
        await tab.wait_for('document.body.dataset.state === "error"')
        view = await tab.evaluate(PAGE_VIEW)
        assert view["status"].startswith(
            "could not join room 'ok': the server refused the session or could not be reached ("
        )
        assert view["status"].endswith("); the server's log says why")
        assert view["joinForm"]
        assert page.chat.gate.requests == 1  # the server saw it, and refused it


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


# The page's geometry: overflow, and where the members and the log are.
GEOMETRY = """(() => {
    const box = (id) => {
        const r = document.getElementById(id).getBoundingClientRect();
        return {left: r.left, right: r.right, top: r.top, bottom: r.bottom,
                width: r.width, height: r.height};
    };
    return {
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: window.innerWidth,
        innerHeight: window.innerHeight,
        members: box("members"),
        log: box("log"),
        say: box("say-form"),
    };
})()"""


async def layout_at(tab: Tab, width: int, height: int) -> tuple[dict[str, Any], bytes]:
    """Resize the tab's viewport; its geometry and a screenshot there."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    await tab.devtools.call("Emulation.setDeviceMetricsOverride", metrics, session=tab.session)
    await tab.wait_for(f"window.innerWidth === {width}")
    geometry: dict[str, Any] = await tab.evaluate(GEOMETRY)
    shot = await tab.devtools.call("Page.captureScreenshot", {"format": "png"}, session=tab.session)
    return geometry, base64.b64decode(shot["data"])


def assert_in_view(geometry: dict[str, Any], name: str) -> None:
    box = geometry[name]
    assert box["width"] > 0, geometry
    assert box["height"] > 0, geometry
    assert box["left"] >= 0, geometry
    assert box["right"] <= geometry["innerWidth"], geometry
    assert box["top"] >= 0, geometry
    assert box["bottom"] <= geometry["innerHeight"], geometry


async def test_the_layout_at_1200_and_400_px_keeps_the_members_in_view(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    async with chat_page(make_server) as page:
        py = await client(page.server, "/chat/layout?name=" + "a-rather-long-name-for-py")
        await asyncio.wait_for(py.accept_stream(), TIMEOUT)
        tab = await page.open(room="layout", name="ada")
        await tab.wait_for('document.getElementById("members").children.length === 2')
        await tab.say("hello at any width")
        await tab.say("an-unbroken-word-" * 20)  # must wrap, not widen the page
        await tab.wait_for_message("ada", "hello at any width")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

        wide, png = await layout_at(tab, 1200, 800)
        (SCREENSHOTS / "chat-1200.png").write_bytes(png)
        assert png_size(png) == (1200, 800)
        assert wide["scrollWidth"] <= wide["innerWidth"], wide
        assert_in_view(wide, "members")
        # Two columns: the members beside the log, on its right.
        assert wide["members"]["left"] >= wide["log"]["right"], wide
        assert wide["members"]["top"] < wide["log"]["bottom"], wide

        narrow, png = await layout_at(tab, 400, 800)
        (SCREENSHOTS / "chat-400.png").write_bytes(png)
        assert png_size(png) == (400, 800)
        assert narrow["scrollWidth"] <= narrow["innerWidth"], narrow
        assert_in_view(narrow, "members")
        assert_in_view(narrow, "say")
        # One column: the members above the log, which fits the width.
        assert narrow["members"]["bottom"] <= narrow["log"]["top"], narrow
        assert narrow["log"]["right"] <= narrow["innerWidth"], narrow
