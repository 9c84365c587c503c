"""`--workers N`: processes sharing one UDP port (SO_REUSEPORT) under a supervisor.

Two workers both serve sessions (seen by the pid each one puts in its CONNECT answer);
a worker killed with SIGKILL is restarted by the supervisor and serves again.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from aiowt import Server
from aiowt.transport import SessionContext, connect
from aiowt.transport.tls import generate_self_signed, write_certificate
from aiowt.workers import whole_lines
from examples.echo import Echo
from tests.conftest import bounded

REPO = Path(__file__).resolve().parents[2]


async def _pid_header(ctx: SessionContext, call_next: object) -> None:
    ctx.add_response_header("x-worker-pid", str(os.getpid()))
    await call_next(ctx)  # type: ignore[operator]


server = Server()
"""What each worker serves (imported by the workers as `tests.aiowt.test_workers:server`)."""
server.use(_pid_header)
server.route("/pid", Echo)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _worker_pid(port: int, cert_hash: str) -> int:
    """Open a session from a fresh client socket; the pid of the worker that answered."""
    session = await connect(f"https://127.0.0.1:{port}/pid", cert_hash=cert_hash, timeout=5)
    try:
        return int(dict(session.request.headers)["x-worker-pid"])
    finally:
        await session.aclose()


async def _read_listening(stdout: asyncio.StreamReader, pids: dict[int, int]) -> None:
    """Read supervisor output until a new `aiowt worker I pid P listening` line."""
    while True:
        line = (await stdout.readline()).decode()
        assert line, "the supervisor exited"
        if line.startswith("aiowt worker ") and " listening on " in line:
            words = line.split()
            pids[int(words[2])] = int(words[4])
            return


_ENTRY_POINTS = {
    "module": ["aiowt.workers", "tests.aiowt.test_workers:server"],
    "cli": ["aiowt", "run", "tests.aiowt.test_workers:server"],
}


@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
async def test_two_workers_share_the_port_and_a_killed_one_is_restarted(
    tmp_path: Path, entry: str
) -> None:
    certificate = generate_self_signed()
    cert_path, key_path = write_certificate(certificate, tmp_path)
    port = _free_udp_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *_ENTRY_POINTS[entry],
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--cert",
        str(cert_path),
        "--key",
        str(key_path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    worker_pids: dict[int, int] = {}
    try:
        async with bounded(30):
            while len(worker_pids) < 2:
                await _read_listening(process.stdout, worker_pids)
        # Each connection comes from a new client port, so the kernel's hash spreads
        # them over both workers; 40 tries all landing on one has odds of 2**-39.
        seen: set[int] = set()
        async with bounded(60):
            for _ in range(40):
                seen.add(await _worker_pid(port, certificate.sha256_hex))
                if seen == set(worker_pids.values()):
                    break
        assert seen == set(worker_pids.values())

        victim_index, victim = next(iter(worker_pids.items()))
        os.kill(victim, signal.SIGKILL)
        restarted: dict[int, int] = {}
        async with bounded(30):
            await _read_listening(process.stdout, restarted)
        assert list(restarted) == [victim_index]
        replacement = restarted[victim_index]
        assert replacement != victim

        survivors = {replacement, *(p for i, p in worker_pids.items() if i != victim_index)}
        seen = set()
        async with bounded(60):
            for _ in range(40):
                pid = await _worker_pid(port, certificate.sha256_hex)
                assert pid != victim
                seen.add(pid)
                if seen == survivors:
                    break
        assert seen == survivors
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with bounded(30):
            code = await process.wait()
    assert code == 0
    for pid in (*worker_pids.values(), *seen):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} outlived its supervisor")


def test_a_workers_log_line_reaches_the_terminal_in_one_write() -> None:
    class Raw(io.RawIOBase):
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.writes.append(bytes(data))
            return len(data)

    raw = Raw()
    unbuffered = io.TextIOWrapper(raw, write_through=True)  # what `python -u` gives
    whole_lines(unbuffered)
    print("2026-12-06 20:53:07 [info     ] stopped", file=unbuffered, flush=True)
    assert raw.writes == [b"2026-12-06 20:53:07 [info     ] stopped\n"]
