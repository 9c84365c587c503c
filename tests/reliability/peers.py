"""Client peers that run in a child process, so a test can SIGKILL them or let them use
the other core: ``python -m tests.reliability.peers MODE URL CERT_SHA256_HEX [ARGS]``.

- ``hold URL HASH N``: open N sessions (each echoes one datagram), print ``ready N``, then
  wait to be killed (at most 120 s).
- ``flood URL HASH SECONDS``: one session that sends datagrams and opens streams as fast
  as it can for at most SECONDS; prints ``flooding`` once the first burst is out and
  ``flooded datagrams=… streams=…`` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from aiowt.transport import AiowtError, Session, connect


async def hold(url: str, cert_hash: str, count: int) -> None:
    sessions: list[Session] = []
    for _ in range(count):
        session = await connect(url, cert_hash=cert_hash, timeout=10)
        session.send_datagram(b"hold")
        async with asyncio.timeout(10):
            await session.receive_datagram()
        sessions.append(session)
    print(f"ready {len(sessions)}", flush=True)
    await asyncio.sleep(120)  # the parent kills us long before


async def flood(url: str, cert_hash: str, seconds: float, rate: float) -> None:
    """Datagrams at `rate` per second (and 4 streams per 64 of them) for `seconds`."""
    # On aioquic whatever the server's engine: a qh3 flooder sends ~5x as fast, enough to
    # overflow the server socket's receive queue for a minute (the onset phase then
    # dominates the test's time, not what it measures).
    session = await connect(
        url, cert_hash=cert_hash, timeout=10, headers=[("x-peer", "flooder")], engine="aioquic"
    )
    payload = b"\x91\xa5flood"  # msgpack ["flood"]
    datagrams = streams = 0
    started = time.monotonic()
    deadline = started + seconds
    announced = False
    while time.monotonic() < deadline and not session.closed:
        # Paced: ahead of `rate`, wait for it (the flood's own clock, not a guess).
        ahead = datagrams / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
        for _ in range(64):
            try:
                if session.send_datagram(payload):
                    datagrams += 1
            except AiowtError:
                break
        for _ in range(4):
            try:
                stream = session.open_stream()
                stream.write(b"\x00\x00\x00\x01\xc0")  # one frame: nil; never finished
                streams += 1
            except AiowtError:
                break
        if not announced:
            print("flooding", flush=True)
            announced = True
        await asyncio.sleep(0)  # let the QUIC stack transmit; then flood again
    print(f"flooded datagrams={datagrams} streams={streams}", flush=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.aclose(), 2)


def main(argv: list[str]) -> int:
    mode, url, cert_hash, *rest = argv
    if mode == "hold":
        asyncio.run(hold(url, cert_hash, int(rest[0])))
    elif mode == "flood":
        asyncio.run(flood(url, cert_hash, float(rest[0]), float(rest[1])))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
