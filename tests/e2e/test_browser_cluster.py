"""The chat demo on the Redis backend: two processes, a Chromium page on each, one room.

Each process is `python -m examples.chat --backend unix://...` with its own WebTransport
port and its own page; the pages join the same room and talk. Everything crosses
processes through Redis: presence, the messages, the typing signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

from tests.browser import require_chromium
from tests.conftest import REPO, bounded
from tests.e2e.test_browser_chat import Tab, browser, require_vendor_client
from tests.redis_server import RedisServer

_PAGE = re.compile(r"(?:open|chat page on) http://localhost:(\d+)/")


@contextlib.asynccontextmanager
async def chat_process(backend: str) -> AsyncIterator[int]:
    """`python -m examples.chat` on free ports of 127.0.0.1; yields its page's port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "examples.chat", "--host", "127.0.0.1", "--port", "0"),
        *("--http-host", "127.0.0.1", "--http-port", "0", "--backend", backend),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    drain: asyncio.Task[None] | None = None
    try:
        output = []
        async with bounded(30):
            while not (match := _PAGE.search("".join(output))):
                line = (await process.stdout.readline()).decode()
                assert line, f"the chat exited: {''.join(output)}"
                output.append(line)

        async def read_on() -> None:
            assert process.stdout is not None
            while await process.stdout.readline():
                pass

        drain = asyncio.create_task(read_on())
        yield int(match.group(1))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 15)
        if process.returncode is None:
            process.kill()
            await process.wait()
        if drain is not None:
            drain.cancel()


async def test_two_pages_on_two_processes_chat_through_redis(redis_server: RedisServer) -> None:
    require_chromium()
    require_vendor_client()
    backend = redis_server.url()
    async with (
        chat_process(backend) as first,
        chat_process(backend) as second,
        browser() as devtools,
    ):
        ada = await Tab.open(devtools, f"http://127.0.0.1:{first}/?room=cluster&name=ada")
        await ada.wait_for('document.body.dataset.state === "joined"')
        bob = await Tab.open(devtools, f"http://127.0.0.1:{second}/?room=cluster&name=bob")
        await bob.wait_for('document.body.dataset.state === "joined"')
        # Presence crosses processes: each page lists the other.
        await ada.wait_for('document.getElementById("members").textContent.includes("bob")')
        await bob.wait_for('document.getElementById("members").textContent.includes("ada")')

        await ada.say("hello from process one")
        await bob.wait_for_message("ada", "hello from process one")
        await bob.say("and hello from process two")
        await ada.wait_for_message("bob", "and hello from process two")

        await bob.close()
        await ada.wait_for('document.getElementById("log").textContent.includes("bob left")')
