"""The transport scenarios, as the load client runs them against any server.

Every scenario is bounded in count and in time (`deadline`), talks to 127.0.0.1 only,
and returns a flat dict of measurements. The primary figure of each (`metric`) is what
the report turns into a ratio to raw aioquic. The client is aiowt's own Python client
(`aiowt.transport.connect`) on aioquic, the same for every server, qh3 ones included
(`CLIENT_ENGINE`: never taken from $AIOWT_ENGINE, so the load is the same in every run).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiowt.transport import Session, connect

Progress = Callable[[int, int], None]
CLIENT_ENGINE = "aioquic"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    metric: str
    unit: str
    higher_is_better: bool
    full: dict[str, Any]
    quick: dict[str, Any]
    target: float | None = None
    """Minimum ratio to raw aioquic that aiowt with the recommended stack must reach."""
    ops_key: str = "ops"
    """The result key counting operations, for server CPU per operation."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "sessions_seq",
            "Session establishment, sequential",
            "rate",
            "sessions/s",
            True,
            {"count": 300, "concurrency": 1},
            {"count": 6, "concurrency": 1},
            target=0.8,
        ),
        Scenario(
            "sessions_conc",
            "Session establishment, 50 concurrent",
            "rate",
            "sessions/s",
            True,
            {"count": 1000, "concurrency": 50},
            {"count": 20, "concurrency": 10},
            target=0.8,
        ),
        Scenario(
            "datagram_echo",
            "Datagram echo, 64 B, 32 in flight",
            "rate",
            "echoes/s",
            True,
            {"count": 100_000, "window": 32, "size": 64},
            {"count": 300, "window": 32, "size": 64},
            target=0.9,
        ),
        Scenario(
            "stream_throughput",
            "Bidirectional stream echo, 10 MB",
            "mb_per_s",
            "MB/s",
            True,
            {"total": 10 * 1024 * 1024, "chunk": 64 * 1024},
            {"total": 256 * 1024, "chunk": 64 * 1024},
            target=0.9,
            ops_key="mb",
        ),
        Scenario(
            "request_latency",
            "Request/response on one stream, 64 B",
            "p50_ms",
            "ms",
            False,
            {"count": 3000, "warmup": 200, "size": 64},
            {"count": 30, "warmup": 5, "size": 64},
        ),
    )
}


@dataclass
class Target:
    url: str
    cert_hash: str
    headers: tuple[tuple[str, str], ...]
    protocol: str = "webtransport"

    async def open(self) -> Session:
        return await connect(
            self.url,
            headers=self.headers,
            cert_hash=self.cert_hash,
            protocol=self.protocol,
            timeout=10,
            engine=CLIENT_ENGINE,
        )


async def _close_quietly(session: Session) -> None:
    """Send the close capsule and CONNECTION_CLOSE, then let the connection finish."""
    with contextlib.suppress(Exception):
        session.close()
        await session.abort()


async def sessions(
    target: Target, *, count: int, concurrency: int, progress: Progress, deadline: float
) -> dict[str, Any]:
    """Open `count` sessions (`concurrency` at a time), each closed once it is open."""
    latencies: list[float] = []
    closers: set[asyncio.Task[None]] = set()
    errors = 0
    issued = 0

    async def worker() -> None:
        nonlocal issued, errors
        while issued < count and time.monotonic() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                session = await target.open()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            progress(len(latencies), count)
            task = asyncio.create_task(_close_quietly(session))
            closers.add(task)
            task.add_done_callback(closers.discard)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if closers:
        await asyncio.wait(list(closers), timeout=10)
    done = len(latencies)
    return {
        "ops": done,
        "errors": errors,
        "seconds": elapsed,
        "rate": done / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
    }


async def datagram_echo(
    target: Target, *, count: int, window: int, size: int, progress: Progress, deadline: float
) -> dict[str, Any]:
    """Keep `window` datagrams of `size` bytes in flight until `count` echoes are back.

    A datagram can be lost: when no echo arrives for 50 ms the window is topped up.
    """
    session = await target.open()
    payload = bytes(size)
    received = 0
    sent = 0
    topped_up = 0
    try:

        async def reader() -> None:
            nonlocal received, sent
            while received < count:
                await session.receive_datagram()
                received += 1
                if sent < count:
                    session.send_datagram(payload)
                    sent += 1
                if received % 1000 == 0:
                    progress(received, count)

        started = time.perf_counter()
        for _ in range(min(window, count)):
            session.send_datagram(payload)
            sent += 1
        task = asyncio.create_task(reader())
        last = -1
        while not task.done() and time.monotonic() < deadline:
            await asyncio.wait([task], timeout=0.05)
            if received == last and not task.done():
                # Nothing came back for 50 ms: the window was lost, refill it.
                for _ in range(window):
                    session.send_datagram(payload)
                topped_up += window
            last = received
        elapsed = time.perf_counter() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await _close_quietly(session)
    return {
        "ops": received,
        "sent": sent + topped_up,
        "lost_refills": topped_up,
        "seconds": elapsed,
        "rate": received / elapsed if elapsed > 0 else 0.0,
    }


async def stream_throughput(
    target: Target, *, total: int, chunk: int, progress: Progress, deadline: float
) -> dict[str, Any]:
    """Write `total` bytes on one bidirectional stream and read the echo to its end."""
    session = await target.open()
    data = bytes(chunk)
    received = 0
    try:
        stream = session.open_stream()

        async def writer() -> None:
            sent = 0
            while sent < total:
                piece = data[: min(chunk, total - sent)]
                stream.write(piece)
                sent += len(piece)
                await stream.drain()
            stream.finish()

        async def reader() -> None:
            nonlocal received
            while piece := await stream.read():
                received += len(piece)
                progress(received, total)

        started = time.perf_counter()
        remaining = max(0.1, deadline - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(writer(), reader()), remaining)
        elapsed = time.perf_counter() - started
    finally:
        await _close_quietly(session)
    return {
        "ops": received,
        "mb": received / 1e6,
        "complete": received == total,
        "seconds": elapsed,
        "mb_per_s": received / 1e6 / elapsed if elapsed > 0 else 0.0,
    }


async def request_latency(
    target: Target, *, count: int, warmup: int, size: int, progress: Progress, deadline: float
) -> dict[str, Any]:
    """Send `size` bytes on one stream and wait for their echo, `count` times in a row."""
    session = await target.open()
    payload = bytes(size)
    latencies: list[float] = []
    try:
        stream = session.open_stream()
        for i in range(warmup + count):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            stream.write(payload)
            got = 0
            while got < size:
                piece = await stream.read()
                if not piece:
                    raise ConnectionError("stream ended before the echo")
                got += len(piece)
            if i >= warmup:
                latencies.append(time.perf_counter() - started)
                if len(latencies) % 100 == 0:
                    progress(len(latencies), count)
        stream.finish()
    finally:
        await _close_quietly(session)
    return {
        "ops": len(latencies),
        "seconds": sum(latencies),
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
        "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else 0.0,
    }


async def hold_sessions(
    target: Target,
    *,
    count: int,
    concurrency: int,
    progress: Progress,
    deadline: float,
    on_all_open: Callable[[int], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Open `count` sessions and keep them all open; check each with a datagram echo."""
    open_sessions: list[Session] = []
    errors = 0
    issued = 0

    async def opener() -> None:
        nonlocal issued, errors
        while issued < count and time.monotonic() < deadline:
            issued += 1
            try:
                open_sessions.append(await target.open())
            except Exception:
                errors += 1
            progress(len(open_sessions), count)

    started = time.perf_counter()
    await asyncio.gather(*(opener() for _ in range(concurrency)))
    open_seconds = time.perf_counter() - started
    # Every session, all open at once, answers a datagram: they are all live.
    for session in open_sessions:
        with contextlib.suppress(Exception):
            session.send_datagram(b"ping")

    async def answered(session: Session) -> bool:
        try:
            await asyncio.wait_for(session.receive_datagram(), 5)
        except Exception:
            return False
        return True

    live = sum(await asyncio.gather(*(answered(s) for s in open_sessions)))
    extra = await on_all_open(live) if on_all_open is not None else {}
    await asyncio.gather(*(_close_quietly(s) for s in open_sessions))
    return {
        "ops": len(open_sessions),
        "errors": errors,
        "live": live,
        "open_seconds": open_seconds,
        **extra,
    }


RUNNERS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "sessions_seq": sessions,
    "sessions_conc": sessions,
    "datagram_echo": datagram_echo,
    "stream_throughput": stream_throughput,
    "request_latency": request_latency,
}


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
