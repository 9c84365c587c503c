"""A tiny HTTP/1.1 server for the chat page: static files and `/config.json`.

Browsers only offer WebTransport in a secure context, and plain HTTP on localhost is
one, so the demo page needs no certificate of its own. `/config.json` tells the page
where the WebTransport server is and which certificate SHA-256 to pin
(`serverCertificateHashes`), so a fresh self-signed certificate works every run, and
the server's rules for room names and names (`ChatGate.rules()`), so the page can refuse
a bad one with the server's own reason before connecting.

Deliberately small: GET and HEAD of files under `static/`, one request per connection.
It is a demo's file server, not a web framework; put a real one in front for anything
public.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import structlog

__all__ = ["STATIC_DIR", "ChatWebServer", "WebConfig"]

log = structlog.get_logger("aiowt.examples.chat.web")

STATIC_DIR = Path(__file__).parent / "static"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
}
_MAX_HEADER_LINES = 100
_REQUEST_TIMEOUT = 10.0


class WebConfig:
    """What the page is told in `/config.json`: the WebTransport port, path and pins.

    `port` may be a callable, read on each request, so the config can follow a server
    that was bound to port 0; `websocket_port` is the server's plain ws:// port, if any.
    `rules` are the server's checks of room and name (`ChatGate.rules()`,
    `Chat.web_config` passes them); without them the page leaves every check to the
    server.
    """

    def __init__(
        self,
        port: int | Callable[[], int],
        certificate_hashes: tuple[str, ...] = (),
        path: str = "/chat/",
        rules: Mapping[str, Mapping[str, str | int]] | None = None,
        websocket_port: int | None = None,
    ) -> None:
        self._port = port
        self.certificate_hashes = certificate_hashes
        self.path = path
        self.rules = rules
        self.websocket_port = websocket_port
        """Where the server serves plain ws:// too: the page falls back to it when the
        browser has no WebTransport or cannot reach UDP (None: WebTransport only)."""

    def __repr__(self) -> str:
        return f"WebConfig(port={self.port}, path={self.path!r})"

    @property
    def port(self) -> int:
        return self._port() if callable(self._port) else self._port

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "port": self.port,
                "path": self.path,
                "certificateHashes": list(self.certificate_hashes),
                "rules": self.rules or {},
                "websocketPort": self.websocket_port,
            }
        ).encode()


class ChatWebServer:
    """Serves `static_dir` and `/config.json` over plain HTTP; `async with` or start/close."""

    def __init__(
        self,
        config: WebConfig,
        *,
        host: str = "localhost",
        port: int = 4434,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.static_dir = static_dir.resolve()
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"ChatWebServer(host={self.host!r}, port={self.port}, static={self.static_dir})"

    @property
    def address(self) -> tuple[str, int]:
        """The first bound address (host, port); the port is the real one after port 0."""
        if self._server is None:
            raise RuntimeError("the web server is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def url(self) -> str:
        """The page's URL on localhost, the name that makes it a secure context."""
        return f"http://localhost:{self.address[1]}/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self.address[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ChatWebServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                status, content_type, body, method = await self._handle(reader)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes, str]:
        request_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request line\n", "GET"
        method, target, _ = parts
        for _ in range(_MAX_HEADER_LINES):
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                break
        else:
            return (
                "431 Request Header Fields Too Large",
                "text/plain",
                b"too many headers\n",
                method,
            )
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n", method
        path = unquote(urlsplit(target).path)
        if path == "/config.json":
            return "200 OK", _CONTENT_TYPES[".json"], self.config.to_json(), method
        # Files are read in a thread: the loop also runs the WebTransport sessions.
        found = await asyncio.to_thread(self._read, path)
        if found is None:
            return "404 Not Found", "text/plain", b"not found\n", method
        suffix, body = found
        return "200 OK", _CONTENT_TYPES.get(suffix, "application/octet-stream"), body, method

    def _read(self, path: str) -> tuple[str, bytes] | None:
        relative = path.lstrip("/") or "index.html"
        candidate = (self.static_dir / relative).resolve()
        # No escaping the static folder with `..` or symlinks.
        if not candidate.is_relative_to(self.static_dir) or not candidate.is_file():
            return None
        return candidate.suffix, candidate.read_bytes()
