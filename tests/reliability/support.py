"""Shared tools of the reliability suite: soak scaling, a log and loop-error watch, a raw
HTTP/3 client, a lossy UDP relay, and resource counters.

Soak mode: ``AIOWT_SOAK=1`` multiplies every count in the suite (hypothesis examples,
churned sessions, repetitions); see `docs/reliability.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import ssl
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from structlog.testing import capture_logs

from aiowt import Server
from aiowt.actors import _runtime
from aiowt.actors._handler import Handler
from aiowt.transport._protocol import WebTransportProtocol
from aiowt.transport.session import Session, Stream

REPO = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("AIOWT_SOAK", "").strip().lower() not in ("", "0", "false", "no")
"""True when the suite runs in soak mode (``AIOWT_SOAK=1``)."""


def scaled(default: int, soak: int) -> int:
    """`soak` in soak mode, else `default`."""
    return soak if SOAK else default


# --- the watch: captured logs and loop errors ---------------------------------------------

# Lines that mean an exception escaped where it should have been handled.
_ALARMS = ("unhandled", "session failed", "fatal", "exception in", "failed to start")


class Watch:
    """Captures every structlog event (with contextvars merged) and every error the event
    loop reports (exceptions in callbacks, unretrieved task exceptions, tasks destroyed
    while pending); `problems()` lists the ones that mean something escaped."""

    def __init__(self, logs: list[dict[str, Any]]) -> None:
        self.logs = logs
        self.loop_errors: list[dict[str, Any]] = []
        self.tolerated = 0
        """Loop errors of an allowed kind (`check(allowed_loop=...)`)."""

    def loop_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self.loop_handler)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs if entry.get("event") == name]

    def problems(
        self,
        allowed: Iterable[str] = (),
        allowed_loop: Iterable[type[BaseException]] = (),
    ) -> list[str]:
        allowed = tuple(allowed)
        loop_kinds = tuple(allowed_loop)
        found: list[str] = []
        for entry in self.logs:
            event = str(entry.get("event", ""))
            if any(event.startswith(prefix) for prefix in allowed):
                continue
            level = entry.get("log_level", "")
            if level in ("error", "critical") or any(a in event.lower() for a in _ALARMS):
                found.append(f"log {level}: {_short(entry)}")
        for context in self.loop_errors:
            if loop_kinds and isinstance(context.get("exception"), loop_kinds):
                self.tolerated += 1
                continue
            found.append(f"loop: {_short(context)}")
        return found

    def check(
        self,
        allowed: Iterable[str] = (),
        allowed_loop: Iterable[type[BaseException]] = (),
    ) -> None:
        # Tasks destroyed while pending and unretrieved exceptions are reported on collection.
        gc.collect()
        problems = self.problems(allowed, allowed_loop)
        assert not problems, "\n".join(problems[:20])


def _short(entry: dict[str, Any]) -> str:
    text = repr({k: v for k, v in entry.items() if k != "exc_info"})[:600]
    exc_info = entry.get("exc_info")
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        text += f" raised {exc_info[1]!r}"
    future = entry.get("future")
    created = getattr(future, "_source_traceback", None)
    if created:  # asyncio debug mode records where a future was made
        text += " created at " + " <- ".join(f"{f[0]}:{f[1]}" for f in reversed(created[-6:]))
    return text


@contextlib.contextmanager
def watching(loop: asyncio.AbstractEventLoop | None = None) -> Iterator[Watch]:
    """Capture logs (contextvars merged, so session ids are in each event) and loop errors."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        watch = Watch(logs)
        previous = None
        if loop is not None:
            previous = loop.get_exception_handler()
            watch.install(loop)
        try:
            yield watch
        finally:
            if loop is not None and not loop.is_closed():
                loop.set_exception_handler(previous)


# --- resources -----------------------------------------------------------------------------


def actor_tasks() -> int:
    """Actor tasks alive (session handlers and services) on any loop."""
    return len(_runtime._running_tasks)


def live_objects() -> Counter[str]:
    """Instances of the per-session classes still reachable after a full collection."""
    gc.collect()
    kinds = (Handler, Session, Stream, WebTransportProtocol)
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        for kind in kinds:
            if isinstance(obj, kind):
                counts[kind.__name__] += 1
    return counts


async def connections_closed(
    connections: Iterable[QuicConnectionProtocol], timeout: float = 10.0
) -> None:
    """Wait (bounded) until every given QUIC connection has terminated."""
    waiting = [asyncio.ensure_future(c.wait_closed()) for c in list(connections)]
    if not waiting:
        return
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*waiting)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def driver(session: Session) -> WebTransportProtocol:
    """The asyncio glue driving `session`'s connection (the session holds the sans-I/O
    core; the core's `send_ready` is the glue's)."""
    glue = getattr(session._protocol.send_ready, "__self__", None)
    assert isinstance(glue, WebTransportProtocol), glue
    return glue


async def yield_to_loop() -> None:
    """Let the loop run one iteration (queued sends go out): a yield, not a timed wait."""
    await asyncio.sleep(0)


# --- a raw HTTP/3 client -------------------------------------------------------------------


def raw_configuration(**options: Any) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=65536,
        **options,
    )


class RawH3(QuicConnectionProtocol):
    """A bare HTTP/3 client: sends any request headers and records every response.

    `responses[stream_id]` lists every HEADERS block the server sent on that stream (so a
    test can check there is exactly one), `ended` the streams the server finished.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.responses: dict[int, list[dict[bytes, bytes]]] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.terminated: ConnectionTerminated | None = None
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_result(None)
            return
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.responses.setdefault(h3_event.stream_id, []).append(dict(h3_event.headers))
                if h3_event.stream_ended:
                    self.ended.add(h3_event.stream_id)
                waiter = self._waiters.get(h3_event.stream_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif isinstance(h3_event, DataReceived):
                self.data[h3_event.stream_id] = (
                    self.data.get(h3_event.stream_id, b"") + h3_event.data
                )
                if h3_event.stream_ended:
                    self.ended.add(h3_event.stream_id)

    def send_request(self, headers: list[tuple[bytes, bytes]], *, end: bool = False) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        self._waiters[stream_id] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(stream_id, headers, end_stream=end)
        self.transmit()
        return stream_id

    async def verdict(self, stream_id: int) -> dict[bytes, bytes] | None:
        """The first response on `stream_id`, or None if the connection ended first."""
        await self._waiters[stream_id]
        answers = self.responses.get(stream_id)
        return answers[0] if answers else None


@contextlib.asynccontextmanager
async def raw_h3(server: Server) -> AsyncIterator[RawH3]:
    """A bare HTTP/3 connection to `server` (not verifying its certificate)."""
    host, port = server.address
    async with quic_connect(
        host, port, configuration=raw_configuration(), create_protocol=RawH3
    ) as raw:
        assert isinstance(raw, RawH3)
        yield raw


def connect_headers(authority: str, path: bytes = b"/echo") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"CONNECT"),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", path),
        (b":protocol", b"webtransport"),
    ]


# --- a lossy, reordering UDP relay ---------------------------------------------------------


class UdpRelay:
    """A UDP relay on 127.0.0.1 between clients and one server, losing, delaying and
    reordering packets on purpose (each direction separately, from a seeded RNG).

    Clients connect to `address`; each client address gets its own upstream socket, so
    the server sees one peer per client. `loss_to_server` / `loss_to_client` are drop
    probabilities; a packet not dropped is held back for up to `max_delay` seconds with
    probability `reorder`, so later packets overtake it. All settings may change while
    running (100 % loss toward a client makes it a peer that never reads).
    """

    def __init__(self, target: tuple[str, int], *, seed: int = 0) -> None:
        self.target = target
        self.loss_to_server = 0.0
        self.loss_to_client = 0.0
        self.reorder = 0.0
        self.max_delay = 0.004
        self.stats: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._front: socket.socket | None = None
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._held: set[asyncio.TimerHandle] = set()

    def __repr__(self) -> str:
        return (
            f"<UdpRelay loss={self.loss_to_server:g}/{self.loss_to_client:g} "
            f"reorder={self.reorder:g} {dict(self.stats)}>"
        )

    @property
    def address(self) -> tuple[str, int]:
        assert self._front is not None
        host, port = self._front.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> UdpRelay:
        self._loop = asyncio.get_running_loop()
        self._front = self._socket()
        self._loop.add_reader(self._front.fileno(), self._front_readable)
        return self

    def close(self) -> None:
        for handle in self._held:
            handle.cancel()
        self._held.clear()
        assert self._loop is not None
        for sock in [self._front, *self._upstream.values()]:
            if sock is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        self._upstream.clear()

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def _front_readable(self) -> None:
        assert self._front is not None
        assert self._loop is not None
        for data, client in _drain(self._front):
            upstream = self._upstream.get(client)
            if upstream is None:
                upstream = self._upstream[client] = self._socket()
                self._loop.add_reader(upstream.fileno(), self._upstream_readable, client)
            self._forward("to_server", upstream, data, self.target, self.loss_to_server)

    def _upstream_readable(self, client: tuple[str, int]) -> None:
        upstream = self._upstream.get(client)
        if upstream is None or self._front is None:
            return
        for data, _ in _drain(upstream):
            self._forward("to_client", self._front, data, client, self.loss_to_client)

    def _forward(
        self,
        direction: str,
        sock: socket.socket,
        data: bytes,
        to: tuple[str, int],
        loss: float,
    ) -> None:
        self.stats[f"{direction}_packets"] += 1
        if loss and self._random.random() < loss:
            self.stats[f"{direction}_dropped"] += 1
            return
        if self.reorder and self._random.random() < self.reorder:
            self.stats[f"{direction}_held"] += 1
            assert self._loop is not None
            delay = self._random.uniform(self.max_delay / 4, self.max_delay)
            handle: asyncio.TimerHandle

            def release() -> None:
                self._held.discard(handle)
                _send(sock, data, to)

            handle = self._loop.call_later(delay, release)
            self._held.add(handle)
            return
        _send(sock, data, to)


def _drain(sock: socket.socket) -> Iterator[tuple[bytes, tuple[str, int]]]:
    for _ in range(256):  # bounded: let the loop breathe between bursts
        try:
            data, addr = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        yield data, (str(addr[0]), int(addr[1]))


def _send(sock: socket.socket, data: bytes, to: tuple[str, int]) -> None:
    if sock.fileno() < 0:
        return
    with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
        sock.sendto(data, to)


# --- subprocess peers ----------------------------------------------------------------------


async def start_peer(*args: str) -> asyncio.subprocess.Process:
    """Run `tests/reliability/peers.py` with `args` in a child Python process."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reliability.peers",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def read_line_starting(process: asyncio.subprocess.Process, prefix: str) -> str:
    """The first line of the child's output that starts with `prefix` (fails on its exit)."""
    assert process.stdout is not None
    seen: list[str] = []
    while True:
        raw = await process.stdout.readline()
        if not raw:
            raise AssertionError(f"the child exited before printing {prefix!r}: {seen[-20:]}")
        line = raw.decode(errors="replace").rstrip("\n")
        seen.append(line)
        if line.startswith(prefix):
            return line
