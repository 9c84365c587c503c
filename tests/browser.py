"""Headless Chromium for end-to-end tests: serve a page on localhost, collect what it POSTs.

The page is plain HTTP on 127.0.0.1 (a secure context, so WebTransport is available);
it reports results by POSTing JSON to `/result`. Chromium runs in its own process group,
killed afterwards, with a fresh profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from aiowt.transport.engine import default_engine

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    if os.environ.get("AIOWT_TRANSPORT") == "websocket":
        # The pages pick their transport themselves; this pass is for Python clients.
        pytest.skip("browser tests run in the first pass (AIOWT_TRANSPORT is for Python clients)")
    if default_engine() == "qh3":
        # tests/transport/test_engines.py shows the cause without a browser.
        pytest.skip(
            "qh3 2.1 answers a client with empty connection ids (Chromium) to the wrong"
            " connection id: browsers cannot reach a qh3 server (docs/engines.md)"
        )
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make test` installs it on Debian")
        pytest.skip("chromium is not installed (make test installs it)")
    return path


class PageServer:
    """A minimal HTTP/1.1 server: GET serves files, POST /result delivers JSON to a queue."""

    def __init__(self, files: Mapping[str, tuple[str, bytes]]) -> None:
        self.files = dict(files)
        self.results: asyncio.Queue[Any] = asyncio.Queue()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> PageServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                while True:
                    request_line = await reader.readline()
                    if not request_line:
                        return
                    method, target, _ = request_line.decode("latin-1").split(" ", 2)
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.decode("latin-1").partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value.strip())
                    body = await reader.readexactly(length) if length else b""
                    if method == "POST" and target == "/result":
                        self.results.put_nowait(json.loads(body))
                        self._respond(writer, 204, "text/plain", b"")
                    elif method == "GET" and target.split("?")[0] in self.files:
                        content_type, content = self.files[target.split("?")[0]]
                        self._respond(writer, 200, content_type, content)
                    else:
                        self._respond(writer, 404, "text/plain", b"not found")
                    await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n\r\n"
        )
        writer.write(head.encode() + body)


@contextlib.asynccontextmanager
async def chromium(*urls: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run headless Chromium on `urls` (one tab each); kill its process group afterwards."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="aiowt-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            *urls,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), 10)


def page(name: str) -> bytes:
    return (Path(__file__).parent / "e2e" / "pages" / name).read_bytes()
