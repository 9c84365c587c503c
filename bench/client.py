"""The load client: one process, the same for every server, with a progress display.

`python -m bench.client --port P --cert-hash H --server-pid PID --scenarios a,b` runs the
named scenarios one after the other against `https://127.0.0.1:P/echo` and prints one
JSON object per scenario on stdout. It also samples the server's CPU time from /proc
around each scenario, so the report can give server CPU per operation: a figure that
noise on a shared machine disturbs much less than a rate does. Progress goes to stderr
(a live line on a terminal, a line every few seconds otherwise).

`--hold N` instead opens N sessions, keeps them all open, checks each one with a
datagram echo and reports the server's memory per session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._proc import cpu_seconds, rss_bytes
from .scenarios import RUNNERS, SCENARIOS, Target, hold_sessions
from .servers import CLIENT_HEADERS


class ProgressLine:
    """A progress display on stderr; redraws at most 5 times a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._scenario = ""

    def begin(self, scenario: str) -> None:
        self._scenario = scenario
        self._last = 0.0
        self(0, 0)

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        interval = 0.2 if self.tty else 5.0
        if now - self._last < interval and done < total:
            return
        self._last = now
        share = f"{done}/{total}" if total else "starting"
        text = f"[{self.label}] {self._scenario}: {share}"
        if self.tty:
            sys.stderr.write(f"\r\x1b[2K{text}")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def end(self, summary: str) -> None:
        text = f"[{self.label}] {self._scenario}: {summary}"
        sys.stderr.write((f"\r\x1b[2K{text}\n") if self.tty else text + "\n")
        sys.stderr.flush()


async def run(args: argparse.Namespace) -> int:
    headers = () if args.no_headers else tuple(CLIENT_HEADERS)
    target = Target(f"https://127.0.0.1:{args.port}/echo", args.cert_hash, headers, args.protocol)
    progress = ProgressLine(args.label)
    if args.hold:
        return await _hold(args, target, progress)
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        params = dict(scenario.quick if args.quick else scenario.full)
        progress.begin(name)
        cpu_before = cpu_seconds(args.server_pid) if args.server_pid else 0.0
        own_before = time.process_time()
        deadline = time.monotonic() + args.time_limit
        try:
            result = await RUNNERS[name](target, progress=progress, deadline=deadline, **params)
        except Exception as exc:  # a failed scenario is reported, the others still run
            result = {"ops": 0, "error": f"{type(exc).__name__}: {exc}"}
        server_cpu = (cpu_seconds(args.server_pid) - cpu_before) if args.server_pid else 0.0
        ops = result.get(scenario.ops_key) or 0
        result["server_cpu_s"] = server_cpu
        result["client_cpu_s"] = time.process_time() - own_before
        result["server_cpu_us_per_op"] = server_cpu / ops * 1e6 if ops else None
        value = result.get(scenario.metric)
        progress.end(f"{value:.4g} {scenario.unit}" if value is not None else "failed")
        print(json.dumps({"scenario": name, "params": params, "result": result}), flush=True)
    return 0


async def _hold(args: argparse.Namespace, target: Target, progress: ProgressLine) -> int:
    pid = args.server_pid
    progress.begin(f"hold {args.hold}")
    rss_before = rss_bytes(pid) if pid else 0

    async def measure(live: int) -> dict[str, Any]:
        rss = rss_bytes(pid) if pid else 0
        return {
            "server_rss_before": rss_before,
            "server_rss_held": rss,
            "server_bytes_per_session": (rss - rss_before) / live if live else None,
            "client_rss": rss_bytes(),
        }

    result = await hold_sessions(
        target,
        count=args.hold,
        concurrency=args.concurrency,
        progress=progress,
        deadline=time.monotonic() + args.time_limit,
        on_all_open=measure,
    )
    progress.end(f"{result['live']} live of {args.hold}")
    print(json.dumps({"scenario": "hold", "result": result}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aiowt bench load client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-hash", required=True)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--label", default="client")
    parser.add_argument("--time-limit", type=float, default=60.0, help="per scenario, seconds")
    parser.add_argument("--hold", type=int, default=0, help="hold this many sessions open")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--no-headers", action="store_true", help="send no authorization")
    parser.add_argument(
        "--protocol",
        default="webtransport",
        help="the CONNECT :protocol token (pywebtransport 0.21 wants webtransport-h3)",
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
