"""The chat demo's own page in headless Chromium: two tabs and a Python client in one room.

The page is the demo's (`examples/chat/static`), served by the demo's HTTP server
(`examples/chat/web.py`), and driven the way a person uses it: type, press send, read
the log. The test drives Chromium through its DevTools protocol over a pipe
(`--remote-debugging-pipe`: NUL-terminated JSON on the browser's fds 3 and 4), so the
page needs no test hooks, and every wait is bounded inside the page itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiowt import Server
from aiowt.transport import Session
from examples.chat.server import Chat
from examples.chat.web import STATIC_DIR, ChatWebServer, WebConfig
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


def require_vendor_msgpack() -> None:
    if not (STATIC_DIR / "vendor" / "msgpack.min.js").is_file():
        message = "the chat page's msgpack is not built: run `npm ci --prefix examples/chat`"
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
    async def open(cls, devtools: DevTools, url: str) -> Tab:
        target = (
            await devtools.call("Target.createTarget", {"url": "about:blank", "newWindow": True})
        )["targetId"]
        attached = await devtools.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )
        tab = cls(devtools, target, attached["sessionId"])
        await devtools.call("Runtime.enable", session=tab.session)
        await devtools.call("Page.enable", session=tab.session)
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
    require_vendor_msgpack()
    chat = Chat()
    server = await make_server(chat.install)
    assert server.certificate is not None
    config = WebConfig(server.address[1], (server.certificate.sha256_hex,))
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
