"""The actor layer alone, on one event loop: ask latency, tell throughput, a composite
middleware decision.

The composite decision is what a session's handshake costs in the shared services with
the recommended stack: three asks (`Acquire` a per-IP slot from `RateLimitRegistry`,
`Register` under the global cap with `SessionRegistry`, `Admit` from `Breaker`)
and one tell (`Inc` to `MetricsCollector`). It is measured one decision at a time (the
latency a single handshake sees) and with 64 handshakes deciding at once (the
throughput of a busy process). If the shared services are not importable, plain
`LoopActor`s stand in for them.

`python -m bench.actors [--quick]` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import pykka

from aiowt.actors import LoopActor


class EchoActor(LoopActor):
    register_globally = False

    def on_receive(self, message: Any) -> Any:
        return message


class CountingActor(LoopActor):
    register_globally = False

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "count?":
            return self.count
        self.count += 1
        return None


def _quantiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "p50_us": ordered[n // 2] / 1e3,
        "p99_us": ordered[min(n - 1, int(n * 0.99))] / 1e3,
        "mean_us": statistics.fmean(ordered) / 1e3,
    }


async def ask_latency(count: int) -> dict[str, Any]:
    """One ask at a time, from a task on the actor's own loop, each timed."""
    ref = EchoActor.start()
    for _ in range(min(1000, count)):
        await ref.ask("ping", block=False)
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(count):
            started = clock()
            await ref.ask("ping", block=False)
            samples.append(clock() - started)
    finally:
        gc.enable()
    await ref.stop(block=False)
    return {"count": count, **_quantiles(samples)}


async def tell_throughput(count: int) -> dict[str, Any]:
    """`count` tells from the loop, then one ask that returns once all were handled."""
    ref = CountingActor.start()
    await ref.ask("count?", block=False)
    started = time.perf_counter()
    tell = ref.tell
    for _ in range(count):
        tell("x")
    handled = await ref.ask("count?", block=False)
    elapsed = time.perf_counter() - started
    await ref.stop(block=False)
    assert handled == count
    return {"count": count, "seconds": elapsed, "per_s": count / elapsed}


class _Services:
    """The four shared services of the recommended stack (real ones when they exist)."""

    def __init__(self) -> None:
        self.real = True
        self.refs: list[pykka.ActorRef[Any]]
        try:
            from aiowt.actors.breaker import Admit, Breaker
            from aiowt.actors.metrics import Inc, MetricsCollector
            from aiowt.actors.ratelimit import Acquire, RateLimitRegistry
            from aiowt.actors.sessions import Register, SessionRegistry
        except ImportError:
            self.real = False
            self.refs = [EchoActor.start() for _ in range(3)]
            self.metrics: pykka.ActorRef[Any] = CountingActor.start()
            return
        self.metrics = MetricsCollector.start()
        self.refs = [RateLimitRegistry.start(), SessionRegistry.start(), Breaker.start()]
        self._Acquire, self._Register, self._Admit, self._Inc = Acquire, Register, Admit, Inc

    async def decide(self, i: int) -> None:
        limiter, registry, breaker = self.refs
        if not self.real:
            await limiter.ask(i, block=False)
            await registry.ask(i, block=False)
            await breaker.ask(i, block=False)
            self.metrics.tell(i)
            return
        holder = f"s{i}"
        if not await limiter.ask(self._Acquire("ip", "127.0.0.1", holder, 10**9), block=False):
            raise RuntimeError("rate limit refused")
        if not await registry.ask(self._Register(holder, 10**9, "127.0.0.1", "/echo"), block=False):
            raise RuntimeError("session cap refused")
        admission = await breaker.ask(self._Admit(), block=False)
        if not admission.allowed:
            raise RuntimeError("breaker refused")
        self.metrics.tell(self._Inc("aiowt_sessions_accepted_total", 1, {"route": "/echo"}))

    async def stop(self) -> None:
        for ref in [*self.refs, self.metrics]:
            await ref.stop(block=False)


async def composite(count: int, concurrency: int) -> dict[str, Any]:
    services = _Services()
    for i in range(200):
        await services.decide(-i - 1)
    started = time.perf_counter()
    if concurrency == 1:
        samples: list[int] = []
        clock = time.perf_counter_ns
        for i in range(count):
            t0 = clock()
            await services.decide(i)
            samples.append(clock() - t0)
        extra: dict[str, Any] = _quantiles(samples)
    else:
        next_i = 0

        async def decider() -> None:
            nonlocal next_i
            while next_i < count:
                i = next_i
                next_i += 1
                await services.decide(i)

        await asyncio.gather(*(decider() for _ in range(concurrency)))
        extra = {}
    elapsed = time.perf_counter() - started
    await services.stop()
    return {
        "count": count,
        "concurrency": concurrency,
        "real_services": services.real,
        "seconds": elapsed,
        "per_s": count / elapsed,
        **extra,
    }


async def run(quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 50_000
    reps = 1 if quick else 5
    results: dict[str, list[dict[str, Any]]] = {
        "ask": [],
        "tell": [],
        "composite_seq": [],
        "composite_64": [],
    }
    for _ in range(reps):
        results["ask"].append(await ask_latency(n))
        results["tell"].append(await tell_throughput(n * 4))
        results["composite_seq"].append(await composite(n // 2, 1))
        results["composite_64"].append(await composite(n, 64))
    return {
        "ask_p50_us": statistics.median(r["p50_us"] for r in results["ask"]),
        "ask_p99_us": statistics.median(r["p99_us"] for r in results["ask"]),
        "tell_per_s": statistics.median(r["per_s"] for r in results["tell"]),
        "composite_seq_per_s": statistics.median(r["per_s"] for r in results["composite_seq"]),
        "composite_seq_p50_us": statistics.median(r["p50_us"] for r in results["composite_seq"]),
        "composite_64_per_s": statistics.median(r["per_s"] for r in results["composite_64"]),
        "real_services": results["composite_seq"][0]["real_services"],
        "reps": reps,
        "runs": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="actor layer micro-benchmarks")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(json.dumps(asyncio.run(run(args.quick))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
