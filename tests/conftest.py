"""Shared fixtures: a real server on loopback and a real client for it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from aiowt import Server
from aiowt.middleware.chain import CallNext
from aiowt.transport import Session, SessionContext, connect
from aiowt.transport.tls import SelfSignedCertificate, generate_self_signed
from aiowt.transport.websocket import connect_websocket
from tests.redis_server import RedisServer

TRANSPORT = os.environ.get("AIOWT_TRANSPORT", "webtransport")
"""What the `client` fixture connects with: `webtransport` (HTTP/3), or `websocket` (the
servers of `make_server` then serve WebSocket too). `make test` runs the end-to-end,
middleware and server suites once more with `AIOWT_TRANSPORT=websocket`."""
OVER_WEBSOCKET = TRANSPORT == "websocket"
METHOD = "GET" if OVER_WEBSOCKET else "CONNECT"
"""The method of the `client` fixture's requests (an upgrade's GET, or an extended CONNECT)."""
HTTP_VERSION = "HTTP/1.1" if OVER_WEBSOCKET else "HTTP/3"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not OVER_WEBSOCKET:
        return
    skip = pytest.mark.skip(reason="about HTTP/3 or QUIC itself: not run over WebSocket")
    for item in items:
        if item.get_closest_marker("quic") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def certificate() -> SelfSignedCertificate:
    return generate_self_signed()


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(certificate: SelfSignedCertificate) -> AsyncIterator[ServerFactory]:
    """Start configured `Server`s on 127.0.0.1 (an ephemeral port); shut them down after."""
    servers: list[Server] = []

    async def factory(configure: Callable[[Server], Any], **options: Any) -> Server:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("certificate", certificate)
        if OVER_WEBSOCKET:
            options.setdefault("websocket", True)
            options.setdefault("websocket_port", 0)
        server = Server(**options)
        configure(server)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await asyncio.wait_for(server.shutdown(timeout=5), 10)


ClientFactory = Callable[..., Awaitable[Session]]


@pytest.fixture
async def client(certificate: SelfSignedCertificate) -> AsyncIterator[ClientFactory]:
    """Connect real clients (pinned to the test certificate); close them after."""
    sessions: list[Session] = []

    async def open_session(server: Server, path: str, **options: Any) -> Session:
        options.setdefault("cert_hash", certificate.sha256)
        if OVER_WEBSOCKET:
            options.pop("engine", None)
            host, port = server.websocket_address
            opening = connect_websocket(f"wss://{host}:{port}{path}", **options)
        else:
            host, port = server.address
            opening = connect(f"https://{host}:{port}{path}", **options)
        session = await asyncio.wait_for(opening, 10)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        await asyncio.wait_for(session.aclose(), 5)


@asynccontextmanager
async def bounded(seconds: float = 5.0) -> AsyncIterator[None]:
    """Every wait in a test has a bound."""
    async with asyncio.timeout(seconds):
        yield


REPO = Path(__file__).resolve().parents[1]


async def start_echo_process(directory: Path) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """Run `aiowt run examples.echo:server` on an ephemeral port of 127.0.0.1, with a
    certificate written to `directory`. Returns the process (stdout piped, stderr merged),
    its port, and the output lines read up to its banner."""
    return await start_server_process("examples.echo:server", directory)


async def start_server_process(
    target: str, directory: Path, *options: str
) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """Run `aiowt run TARGET` on an ephemeral port of 127.0.0.1 with `options`, with the
    certificate in `directory` (written when missing). Returns the process (stdout piped,
    stderr merged), its port, and the output lines read up to its banner."""
    from aiowt.cli import main as cli

    if not (directory / "cert.pem").exists():
        assert cli(["cert", "--out", str(directory)]) == 0
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "aiowt", "run", target),
        *("--host", "127.0.0.1", "--port", "0"),
        *("--cert", str(directory / "cert.pem"), "--key", str(directory / "key.pem")),
        *options,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    output: list[str] = []
    try:
        async with bounded(20):
            while True:
                line = (await process.stdout.readline()).decode()
                assert line, f"the server exited before its banner: {output}"
                output.append(line)
                if line.startswith("aiowt serving WebTransport on "):
                    return process, int(line.split()[4].rsplit(":", 1)[1]), output
    except BaseException:
        process.kill()
        await process.wait()
        raise


class Unwound:
    """Outermost test middleware: reports when a session's whole chain has unwound."""

    def __init__(self) -> None:
        self.done: asyncio.Queue[SessionContext] = asyncio.Queue()

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        try:
            await call_next(ctx)
        finally:
            self.done.put_nowait(ctx)

    async def wait(self, count: int) -> None:
        async with bounded():
            for _ in range(count):
                await self.done.get()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop and restart it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
