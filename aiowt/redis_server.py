"""A private `redis-server` for development and tests: a unix socket in a folder of its
own, no TCP port, nothing written to disk.

    with RedisServer() as redis:
        server = Server(backend=RedisBackend.from_url(redis.url()))

`python -m examples.chat.cluster` and the test suite start theirs this way. Needs the
`redis-server` program (Debian's package of that name; `make system-packages`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

__all__ = ["RedisServer"]


class RedisServer:
    """One redis-server process on ``<directory>/redis.sock``; `stop()`, then `start()` again.

    Without a `directory`, one is made on `start()` and removed on `stop()`.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._own_directory: tempfile.TemporaryDirectory[str] | None = None
        self._directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        if self._directory is None:
            raise RuntimeError("the server has no folder yet: start() it first")
        return self._directory / "redis.sock"

    def url(self, **options: object) -> str:
        """The server's URL, with backend options as its query (``url(prefix="chat")``)."""
        query = urlencode({name: str(value) for name, value in options.items()})
        return f"unix://{self.socket_path}" + (f"?{query}" if query else "")

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it is ready; `FileNotFoundError` without
        redis-server, `TimeoutError` if it is not ready within `timeout` seconds."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise FileNotFoundError("redis-server is not installed (Debian: redis-server)")
        if self._directory is None:
            self._own_directory = tempfile.TemporaryDirectory(prefix="aiowt-redis-")
            self._directory = Path(self._own_directory.name)
        path = self.socket_path
        # redis-server says when it is ready (the systemd notify protocol: "READY=1" on
        # a datagram socket named in NOTIFY_SOCKET): wait for that, not for a poll.
        ready = self._directory / "ready.sock"
        ready.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(ready))
            self.process = subprocess.Popen(
                [
                    executable,
                    *("--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700"),
                    *("--save", "", "--appendonly", "no", "--supervised", "systemd"),
                    *("--dir", str(self._directory), "--loglevel", "warning"),
                ],
                env={**os.environ, "NOTIFY_SOCKET": str(ready)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            try:
                notify.settimeout(timeout)
                while b"READY=1" not in notify.recv(4096):
                    notify.settimeout(max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                self.stop()
                raise TimeoutError(f"redis-server was not ready within {timeout} s") from None
            finally:
                ready.unlink(missing_ok=True)

    def stop(self) -> None:
        """Kill the server, as a crash would: nothing saved, every client cut off."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        if self._directory is not None:
            self.socket_path.unlink(missing_ok=True)
        if self._own_directory is not None:
            self._own_directory.cleanup()
            self._own_directory = self._directory = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
