"""aiowt over WebSocket against a raw `websockets` echo server, in the same run.

`python -m bench.websocket [--quick]`. Two server processes on loopback, plain ws://:

- `raw-websockets`: the `websockets` library's own asyncio server echoing each binary
  message (compression off, as aiowt's is): the ceiling.
- `aiowt-ws`: `Server(websocket=True)` with the echo example's handler (an actor per
  session), so a message passes the mux framing, the session's events and the actor.

Scenarios, each measured as the server's CPU per operation (the client's cost is not
the server's): a datagram echo (one WebSocket message each way for both servers), and
request/response on a stream (a msgpack frame; raw: a message). The ratio is raw CPU per
operation over aiowt's: 1.0x means as cheap as the raw server. Results go to
`bench/results/websocket.json`, the table to `bench/analysis.md` (which
docs/performance.md includes) and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from ._proc import REPO, cpu_seconds, log, machine

RESULTS = REPO / "bench" / "results" / "websocket.json"
DOCS = (REPO / "bench" / "analysis.md", REPO / "docs" / "performance.md")
"""Where the table goes (between the `bench.websocket` markers): the analysis, and the
performance page that includes it."""
KINDS = ("raw-websockets", "aiowt-ws")
PAYLOAD = {"type": "say", "text": "x" * 48}


# --- the servers (run as `python -m bench.websocket --serve KIND`) ------------------------


async def _serve_raw() -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=2**20) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {port}", flush=True)
        await asyncio.Future()


async def _serve_aiowt() -> None:
    import structlog

    from aiowt import Server
    from examples.echo import Echo

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    server = Server(host="127.0.0.1", port=0, websocket=True, websocket_port=0, websocket_tls=False)
    server.route("/echo", Echo)
    await server.start()
    print(f"READY {server.websocket_address[1]}", flush=True)
    await asyncio.Future()


# --- the clients --------------------------------------------------------------------------


async def _raw_client(port: int) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    import msgpack
    from websockets.asyncio.client import connect

    connection = await connect(f"ws://127.0.0.1:{port}/echo", compression=None)
    message = msgpack.packb(PAYLOAD)

    async def round_trip() -> None:
        await connection.send(message)
        msgpack.unpackb(await connection.recv())

    return round_trip, connection.close


async def _aiowt_datagram(port: int) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    from aiowt.transport import connect

    session = await connect(f"ws://127.0.0.1:{port}/echo")

    async def round_trip() -> None:
        session.send_datagram_message(PAYLOAD)
        await session.receive_datagram_message()

    return round_trip, session.aclose


async def _aiowt_stream(port: int) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    from aiowt.transport import connect

    session = await connect(f"ws://127.0.0.1:{port}/echo")
    stream = session.open_stream()

    async def round_trip() -> None:
        stream.send_message(PAYLOAD)
        await stream.receive_message()

    return round_trip, session.aclose


SCENARIOS = {
    "datagram echo": {"raw-websockets": _raw_client, "aiowt-ws": _aiowt_datagram},
    "request/response": {"raw-websockets": _raw_client, "aiowt-ws": _aiowt_stream},
}


async def _measure(
    pid: int, port: int, opener: Callable[..., Any], clients: int, count: int
) -> dict[str, float]:
    pairs = [await opener(port) for _ in range(clients)]
    for round_trip, _ in pairs:  # warm up every path
        for _ in range(50):
            await round_trip()
    cpu_before, started = cpu_seconds(pid), time.perf_counter()

    async def run(round_trip: Callable[[], Awaitable[None]]) -> None:
        for _ in range(count):
            await round_trip()

    await asyncio.gather(*(run(round_trip) for round_trip, _ in pairs))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    for _, close in pairs:
        await close()
    operations = clients * count
    return {
        "operations": operations,
        "ops_per_second": operations / elapsed,
        "server_cpu_us_per_op": cpu / operations * 1e6,
        "latency_us": elapsed / count * 1e6,
    }


def _start(kind: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.websocket", "--serve", kind],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"{kind} did not start: {line!r}")
    return process, int(line.split()[1])


async def _run(quick: bool) -> dict[str, Any]:
    count = 500 if quick else 4000
    results: dict[str, Any] = {"machine": machine(), "scenarios": {}}
    for scenario, openers in SCENARIOS.items():
        for clients in (1, 8):
            row: dict[str, Any] = {}
            for kind in KINDS:
                process, port = _start(kind)
                try:
                    row[kind] = await _measure(process.pid, port, openers[kind], clients, count)
                finally:
                    process.kill()
                    process.wait()
            raw, ours = row["raw-websockets"], row["aiowt-ws"]
            row["ratio"] = raw["server_cpu_us_per_op"] / ours["server_cpu_us_per_op"]
            results["scenarios"][f"{scenario}, {clients} session(s)"] = row
            log(f"{scenario} x{clients}: {row['ratio']:.2f}x")
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | server CPU per op, raw / aiowt (µs) | CPU ratio | round trips/s,"
        " raw / aiowt | latency, raw / aiowt (µs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in results["scenarios"].items():
        raw, ours = row["raw-websockets"], row["aiowt-ws"]
        lines.append(
            f"| {name} | {raw['server_cpu_us_per_op']:.1f} / {ours['server_cpu_us_per_op']:.1f}"
            f" | {row['ratio']:.2f}x | {raw['ops_per_second']:,.0f} / {ours['ops_per_second']:,.0f}"
            f" | {raw['latency_us']:.0f} / {ours['latency_us']:.0f} |"
        )
    return "\n".join(lines)


def write_table(table: str, doc: Path) -> None:
    """Replace what is between the page's `bench.websocket` markers with `table`."""
    begin, end = "<!-- bench.websocket -->", "<!-- /bench.websocket -->"
    head, rest = doc.read_text().split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{table}\n{end}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.websocket", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "raw-websockets":
        asyncio.run(_serve_raw())
    elif args.serve == "aiowt-ws":
        asyncio.run(_serve_aiowt())
    results = asyncio.run(_run(args.quick))
    table = render(results)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        for doc in DOCS:
            write_table(table, doc)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
