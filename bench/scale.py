"""Scale in one process: 10,000 sessions' actors and registries; stopping 50,000 actors.

- `sessions`: on top of an empty, listening `Server` and the four shared services,
  admit N sessions the way the recommended stack does (a per-IP slot in
  `RateLimitRegistry`, a registration under the cap in `SessionRegistry`, a breaker
  admission, a metrics tell), each with its `SessionContext`, its transport `Session`
  object (on a stand-in connection: no QUIC here) and its started handler actor, attached
  to the registry. Reported: the time until every actor has run `on_start`, and memory
  above the empty server, by tracemalloc (a separate run, as tracing slows allocation)
  and by RSS.
- `stop`: start N handler actors, then stop them all; the time until every actor task
  has finished. Beside it, the same with actors kept in pykka's list-based
  `ActorRegistry` (what `register_globally = True` costs), at smaller counts.

Each part runs in a fresh subprocess; `python -m bench.scale [--quick]` prints one JSON
object with all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any, ClassVar

from ._proc import rss_bytes

LIMIT = 10**9


class _Connection:
    """Stands in for `WebTransportProtocol` where a session needs one: closing only."""

    def close_session(self, session: Any, code: int, reason: str) -> None:
        from aiowt.transport.context import CloseInfo
        from aiowt.transport.events import SessionClosed

        session._emit(SessionClosed(CloseInfo(code, reason, False)))


def _handler_class(register: bool) -> type[Any]:
    from aiowt.actors import Handler

    class Idle(Handler):
        """A session actor that has started and waits for traffic."""

        started: ClassVar[int] = 0
        expected: ClassVar[int] = 0
        all_started: ClassVar[asyncio.Event | None] = None
        register_globally = register

        async def on_start(self) -> None:  # type: ignore[override]
            cls = type(self)
            cls.started += 1
            if cls.all_started is not None and cls.started >= cls.expected:
                cls.all_started.set()

        @classmethod
        async def wait_started(cls, count: int) -> None:
            """Return once `count` actors of this class have run `on_start`."""
            cls.expected = count
            event = cls.all_started = asyncio.Event()
            if cls.started < count:
                await event.wait()

    return Idle


def _make_session(i: int, connection: Any) -> tuple[Any, Any]:
    from aiowt.transport.context import SessionContext
    from aiowt.transport.request import ConnectRequest
    from aiowt.transport.session import Session

    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    request = ConnectRequest(
        method="CONNECT",
        scheme="https",
        authority="localhost:4433",
        path="/echo",
        query_string="",
        protocol="webtransport",
        headers=(("authorization", "Bearer bench-token"), ("user-agent", "bench")),
        remote_addr=(ip, 40000 + i % 20000),
    )
    ctx = SessionContext(request=request, route_pattern="/echo")
    ctx.request_id = ctx.session_id
    session = Session(connection, i * 4, request)
    return ctx, session


async def _empty_server() -> Any:
    from aiowt import Server

    server = Server(host="127.0.0.1", port=0)
    server.route("/echo", _handler_class(False))
    await server.start()
    return server


async def part_sessions(count: int, traced: bool) -> dict[str, Any]:
    """Admit `count` sessions on top of an empty server; time and memory."""
    from aiowt.actors._handler import attach_handler
    from aiowt.actors.breaker import Admit, Breaker
    from aiowt.actors.metrics import Inc, MetricsCollector
    from aiowt.actors.ratelimit import Acquire, RateLimitRegistry
    from aiowt.actors.sessions import Attach, Register, SessionRegistry

    server = await _empty_server()
    limiter = RateLimitRegistry.start()
    registry = SessionRegistry.start()
    breaker = Breaker.start()
    metrics = MetricsCollector.start()
    handler = _handler_class(False)
    connection = _Connection()
    # Warm every code path once, so that what is measured is per-session state only.
    ctx, session = _make_session(10**7, connection)
    await limiter.ask(Acquire("ip", ctx.remote_ip, ctx.session_id, LIMIT), block=False)
    await registry.ask(Register(ctx.session_id, LIMIT, ctx.remote_ip, ctx.path), block=False)
    await breaker.ask(Admit(), block=False)
    metrics.tell(Inc("aiowt_sessions_accepted_total", 1, {"route": "/echo"}))
    await metrics.ask(Inc("aiowt_sessions_accepted_total", 0, {"route": "/echo"}), block=False)
    del ctx, session
    gc.collect()
    if traced:
        tracemalloc.start()
    baseline_traced = tracemalloc.get_traced_memory()[0] if traced else 0
    baseline_rss = rss_bytes()
    kept: list[Any] = []

    async def admit(i: int) -> None:
        ctx, session = _make_session(i, connection)
        ip = ctx.remote_ip
        if not await limiter.ask(Acquire("ip", ip, ctx.session_id, LIMIT), block=False):
            raise RuntimeError("refused")
        if not await registry.ask(Register(ctx.session_id, LIMIT, ip, ctx.path), block=False):
            raise RuntimeError("refused")
        await breaker.ask(Admit(), block=False)
        ref = handler.start(ctx, session)
        attach_handler(session, ref)
        await registry.ask(Attach(ctx.session_id, session), block=False)
        metrics.tell(Inc("aiowt_sessions_accepted_total", 1, {"route": "/echo"}))
        kept.append(ref)

    started = time.perf_counter()
    waiting = asyncio.ensure_future(handler.wait_started(handler.started + count))
    await asyncio.gather(*(admit(i) for i in range(count)))
    await waiting
    elapsed = time.perf_counter() - started
    gc.collect()
    result: dict[str, Any] = {
        "count": count,
        "seconds": elapsed,
        "rss_above_empty": rss_bytes() - baseline_rss,
    }
    if traced:
        result["traced_above_empty"] = tracemalloc.get_traced_memory()[0] - baseline_traced
        tracemalloc.stop()
    for ref in kept:
        ref.stop(block=False)
    await asyncio.sleep(0.1)
    await server.shutdown(timeout=2)
    return result


async def part_stop(count: int, registered: bool) -> dict[str, Any]:
    """Start `count` handler actors, then stop them all; time the stopping."""
    handler = _handler_class(registered)
    connection = _Connection()
    refs = []
    waiting = asyncio.ensure_future(handler.wait_started(count))
    for i in range(count):
        ctx, session = _make_session(i, connection)
        refs.append(handler.start(ctx, session))
    await waiting
    tasks = [ref._actor_weakref()._actor_task for ref in refs]
    gc.collect()
    started = time.perf_counter()
    for ref in refs:
        ref.stop(block=False)
    await asyncio.wait(tasks, timeout=120)
    elapsed = time.perf_counter() - started
    return {
        "count": count,
        "registered": registered,
        "seconds": elapsed,
        "all_stopped": all(t.done() for t in tasks),
    }


def _run_part(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", *argv],
        stdout=subprocess.PIPE,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"exit status {done.returncode}"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="scale in one process")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("sessions", "stop"))
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--traced", action="store_true")
    parser.add_argument("--registered", action="store_true")
    parser.add_argument("--gc-off", action="store_true", help="diagnostic: no cyclic GC")
    args = parser.parse_args(argv)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.gc_off:
        gc.disable()
    if args.part == "sessions":
        result = asyncio.run(part_sessions(args.count, args.traced))
    elif args.part == "stop":
        result = asyncio.run(part_stop(args.count, args.registered))
    else:
        sessions_n = 1_000 if args.quick else 10_000
        stop_n = 2_000 if args.quick else 50_000
        reps = 1 if args.quick else 3
        runs = [_run_part(["--part", "sessions", "--count", str(sessions_n)]) for _ in range(reps)]
        traced = _run_part(["--part", "sessions", "--count", str(sessions_n), "--traced"])
        stops = [_run_part(["--part", "stop", "--count", str(stop_n)]) for _ in range(reps)]
        naive = [
            _run_part(["--part", "stop", "--count", str(n), "--registered"])
            for n in ((500, 1_000) if args.quick else (10_000, 25_000, 50_000))
        ]
        count_args = ["--count", str(sessions_n), "--gc-off"]
        result = {
            "sessions": {
                "count": sessions_n,
                "runs": runs,
                "traced": traced,
                "gc_off": _run_part(["--part", "sessions", *count_args]),
            },
            "stop": {
                "count": stop_n,
                "runs": stops,
                "gc_off": _run_part(["--part", "stop", "--count", str(stop_n), "--gc-off"]),
            },
            "stop_registered": naive,
        }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
