"""The native reference: a pywebtransport (0.21, Rust QUIC core) echo server.

Run with a Python >= 3.12 that has `pywebtransport` installed (the bench makes one in
`build/bench-py312`); this file imports nothing of aiowt or of the bench, so it runs
in that interpreter as `python bench/pwt_server.py --port 0 --cert C --key K` and
prints `READY <port>` once listening. Same behaviour as the raw aioquic server: every
session is accepted, datagrams and bidirectional stream bytes are echoed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from typing import Any

from pywebtransport import ServerConfig, WebTransportServer


async def _echo_stream(stream: Any) -> None:
    with contextlib.suppress(Exception):
        while True:
            data = await stream.read(max_size=65536)
            if not data:
                break
            await stream.write(data=data)
        await stream.write(data=b"", end_stream=True)


async def _echo_datagrams(session: Any) -> None:
    with contextlib.suppress(Exception):
        while True:
            data = await session.read_datagram()
            await session.send_datagram(data=data)


async def _serve_session(session: Any, tasks: set[asyncio.Task[None]]) -> None:
    with contextlib.suppress(Exception):
        await session.accept()
        datagrams = asyncio.create_task(_echo_datagrams(session))
        tasks.add(datagrams)
        datagrams.add_done_callback(tasks.discard)
        async for stream in session.incoming_bidirectional_streams():
            task = asyncio.create_task(_echo_stream(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _serve_connection(connection: Any, tasks: set[asyncio.Task[None]]) -> None:
    with contextlib.suppress(Exception):
        async for session in connection.incoming_sessions():
            task = asyncio.create_task(_serve_session(session, tasks))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def serve(host: str, port: int, cert: str, key: str) -> None:
    port = port or _free_port(host)
    config = ServerConfig(
        bind_host=host,
        bind_port=port,
        certfile=cert,
        keyfile=key,
        max_connections=4096,
        max_sessions=64,
        max_pending_datagrams=4096,
        max_session_pending_events=4096,
        max_connection_pending_events=8192,
        max_streams_bidi=1000,
    )
    server = WebTransportServer(config=config)
    await server.listen()
    print(f"READY {port}", flush=True)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def accept_loop() -> None:
        async for connection in server.incoming_connections():
            task = asyncio.create_task(_serve_connection(connection, tasks))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.create_task(accept_loop())
    await stop.wait()
    acceptor.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.close(), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description="pywebtransport echo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=int(__import__("os").environ.get("PWT_LOG", "40")))
    asyncio.run(serve(args.host, args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
