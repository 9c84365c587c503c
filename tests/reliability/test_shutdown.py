"""Shutdown during active traffic.

In process: sessions busy with stream round trips, datagrams and a bulk upload when
`Server.shutdown()` is called. Every client session must end with `GOING_AWAY` (the
server's close capsule, not a bare CONNECTION_CLOSE), every handler's `on_stop` must run
once with that code, shutdown must finish well within `shutdown_timeout`, the clients'
traffic must end only with the closed-session errors, and nothing may be logged as an
error or reported to the loop.

A real server process (`aiowt run examples.echo:server`) with busy clients exits with
status 0 within the deadline after SIGTERM, and its clients see `GOING_AWAY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import ClassVar

import pytest

from aiowt.transport import (
    AiowtError,
    CloseCode,
    CloseInfo,
    Session,
    Stream,
    connect,
)
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import ServerFactory, bounded, start_echo_process
from tests.reliability.support import scaled, watching

SESSIONS = scaled(20, 150)
SHUTDOWN_TIMEOUT = 5.0


class Busy(Echo):
    stops: ClassVar[list[CloseInfo | None]]
    started: ClassVar[asyncio.Queue[None]]

    async def on_start(self) -> None:
        await super().on_start()
        self.pushing: asyncio.Future[None] | None = None
        self.started.put_nowait(None)

    async def on_stop(self) -> None:
        if self.pushing is not None:
            self.pushing.cancel()
        self.stops.append(self.close_info)

    async def on_datagram(self, data: bytes) -> None:
        if data != b"download":
            await super().on_datagram(data)
        elif self.pushing is None:
            # Server-to-client bulk that keeps the server's congestion window full. In a
            # task of its own: a loop in the hook would hold the actor (one message at a
            # time) and starve the session's other traffic.
            self.pushing = asyncio.ensure_future(self._push(self.open_stream(unidirectional=True)))

    async def _push(self, stream: Stream) -> None:
        chunk = b"D" * 65536
        with contextlib.suppress(AiowtError):
            while not self.session.closed:
                stream.write(chunk)
                await stream.drain()


async def _download(session: Session, download: bool) -> None:
    if not download:
        return
    session.send_datagram(b"download")
    with contextlib.suppress(AiowtError):
        stream = await session.accept_stream()
        while await stream.read():
            pass


async def traffic(session: Session, ready: asyncio.Event, download: bool = False) -> str:
    """Keep the session busy until it closes; return how its traffic ended (the read or
    write that met the close: only the closed-session errors are expected)."""
    downloading = asyncio.ensure_future(_download(session, download))
    try:
        stream = session.open_stream()
        upload = session.open_stream()
        n = 0
        while True:
            stream.send_message(n)
            session.send_datagram(b"d%d" % n)
            upload.write(b"u" * 4096)
            assert await stream.receive_message() == n
            n += 1
            if n == 3:
                ready.set()
    except AiowtError as error:
        if not session.closed:
            raise
        return type(error).__name__
    finally:
        downloading.cancel()


@pytest.mark.timeout(scaled(60, 600))
@pytest.mark.parametrize("download", [False, True], ids=["requests", "requests and a download"])
async def test_shutdown_under_traffic_sends_going_away_to_every_session(
    make_server: ServerFactory, certificate: SelfSignedCertificate, download: bool
) -> None:
    Busy.stops, Busy.started = [], asyncio.Queue()
    with watching(asyncio.get_running_loop()) as watch:
        server = await make_server(
            lambda s: s.route("/busy/{n}", Busy), shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        host, port = server.address
        sessions = await asyncio.gather(
            *(
                connect(f"https://{host}:{port}/busy/{n}", cert_hash=certificate.sha256)
                for n in range(SESSIONS)
            )
        )
        readies = [asyncio.Event() for _ in sessions]
        tasks = [
            asyncio.ensure_future(traffic(s, r, download))
            for s, r in zip(sessions, readies, strict=True)
        ]
        try:
            async with bounded(30):
                for ready in readies:
                    await ready.wait()  # every session is mid-traffic
                started = time.monotonic()
                await server.shutdown()
                took = time.monotonic() - started
                endings = await asyncio.gather(*tasks)
                infos = [await s.wait_closed() for s in sessions]
        finally:
            for task in tasks:
                task.cancel()
            # The server is gone: nobody would acknowledge a close capsule.
            await asyncio.gather(*(session.abort() for session in sessions))
        print(f"shutdown: {SESSIONS} busy sessions in {took:.2f} s; traffic ended {set(endings)}")
        assert set(endings) <= {"SessionClosedError", "StreamClosedError"}, endings
        assert took < SHUTDOWN_TIMEOUT
        codes = [(i.code, i.reason) for i in infos]
        assert codes == [(CloseCode.GOING_AWAY, "server shutting down")] * SESSIONS, codes
        assert len(Busy.stops) == SESSIONS
        for info in Busy.stops:
            assert info is not None
            assert (info.code, info.by_peer) == (CloseCode.GOING_AWAY, False)
    watch.check()


@pytest.mark.timeout(scaled(90, 300))
async def test_a_server_process_exits_promptly_on_sigterm_while_clients_are_busy(
    tmp_path: Path,
) -> None:
    process, port, output = await start_echo_process(tmp_path)
    assert process.stdout is not None
    sessions: list[Session] = []
    tasks: list[asyncio.Future[str]] = []
    try:
        async with bounded(20):
            for _ in range(scaled(10, 50)):
                sessions.append(await connect(f"https://127.0.0.1:{port}/echo", verify=False))
            readies = [asyncio.Event() for _ in sessions]
            tasks = [
                asyncio.ensure_future(traffic(s, r)) for s, r in zip(sessions, readies, strict=True)
            ]
            for ready in readies:
                await ready.wait()
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        async with bounded(15):
            code = await process.wait()
            took = time.monotonic() - started
            await asyncio.gather(*tasks)
            infos = [await s.wait_closed() for s in sessions]
        rest = (await process.stdout.read()).decode()
        print(f"server process exited {code} {took:.2f} s after SIGTERM")
        assert code == 0, [*output, rest]
        # The default shutdown_timeout of examples.echo:server is 10 s; with handlers
        # that end at once it must take a fraction of it.
        assert took < 5.0
        assert {(i.code, i.reason) for i in infos} == {
            (CloseCode.GOING_AWAY, "server shutting down")
        }
        assert "Traceback" not in rest, rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(session.abort() for session in sessions))
