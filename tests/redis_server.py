"""A real `redis-server` for the tests: on a unix socket in a temporary folder, no disk.

`make test` installs Debian's redis-server; each server here is started by the test run
(`--port 0`: no TCP at all; `--save ''`, `--appendonly no`: nothing on disk) and stopped
by its PID. Tests share one per session and keep apart by key prefix; a test that stops
or restarts Redis starts one of its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

__all__ = ["RedisServer", "require_redis_server"]


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: `make test` installs it on Debian")
        pytest.skip("redis-server is not installed (make test installs it)")
    return path


class RedisServer:
    """One redis-server process on `socket_path`; `stop()` and `start()` again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, **options: object) -> str:
        """A backend URL for this server, with a fresh prefix unless one is given."""
        options.setdefault("prefix", f"t{uuid.uuid4().hex[:12]}")
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"unix://{self.socket_path}?{query}"

    def start(self, timeout: float = 10.0) -> None:
        executable = require_redis_server()
        self.process = subprocess.Popen(
            [
                executable,
                *("--port", "0", "--unixsocket", str(self.socket_path)),
                *("--unixsocketperm", "700", "--save", "", "--appendonly", "no"),
                *("--dir", str(self.directory), "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill the server (as a crash would: nothing saved, clients cut off)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        self.socket_path.unlink(missing_ok=True)

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(1.0)
            try:
                client.connect(str(self.socket_path))
                client.sendall(b"PING\r\n")
                return client.recv(16).startswith(b"+PONG")
            except OSError:
                return False
