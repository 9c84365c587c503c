"""A small asyncio HTTP/1.1 endpoint for operators' pages (``/metrics``, ``/.status``, ...).

WebTransport runs over UDP; scrapers and health checkers speak plain HTTP over TCP.
`HttpEndpoint` serves a few GET routes on a port of its own, on the same event loop
(nothing blocks it: requests are read with a timeout and a size bound, each answer is
one response and ``Connection: close``), or mounts into an existing web application as
an ASGI app (`HttpEndpoint.asgi`), which is how a user "mounts" it in Starlette,
FastAPI, Quart, or any ASGI server.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from aiowt.transport.errors import UsageError

__all__ = ["HttpEndpoint", "HttpRequest", "HttpResponse", "RouteHandler", "ServesPages"]

log = structlog.get_logger("aiowt.http")

_MAX_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request to an `HttpEndpoint` (no body: the routes are GET and HEAD only)."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-case names; the last value of a repeated header."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, value: Any, status: int = 200) -> HttpResponse:
        body = json.dumps(value, indent=2, sort_keys=False).encode() + b"\n"
        return cls(status, body, "application/json")


RouteHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class HttpEndpoint:
    """GET routes served on a TCP port (`start`) or as an ASGI app (`asgi`).

    `routes` maps exact paths to async handlers. Unknown paths are 404, methods other
    than GET and HEAD 405, a handler's exception 500 (logged). A request head must
    arrive within `read_timeout` seconds and fit in 16 KiB.
    """

    def __init__(self, routes: Mapping[str, RouteHandler], *, read_timeout: float = 10.0):
        for path, handler in routes.items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise UsageError(f"a route path starts with '/', got {path!r}")
            if not callable(handler):
                raise UsageError(f"the handler for {path} must be an async callable")
        if not isinstance(read_timeout, int | float) or read_timeout <= 0:
            raise UsageError(f"read_timeout must be a positive number, got {read_timeout!r}")
        self.routes = dict(routes)
        self.read_timeout = float(read_timeout)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        where = "not serving"
        if self._server is not None:
            host, port = self.address
            where = f"http://{host}:{port}"
        return f"HttpEndpoint({sorted(self.routes)}, {where})"

    # --- serving on a port -----------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> HttpEndpoint:
        """Listen on `host`:`port` (0: any free port; see `address`). Returns self."""
        if self._server is not None:
            raise UsageError("this endpoint is already serving")
        self._server = await asyncio.start_server(self._connection, host, port, limit=_MAX_HEAD)
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise UsageError("the endpoint is not serving")
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    @property
    def url(self) -> str:
        """``http://host:port`` of the running endpoint."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def aclose(self) -> None:
        """Stop listening and end open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        await server.wait_closed()

    async def __aenter__(self) -> HttpEndpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            response, method = await self._read_and_answer(reader)
            if response is not None:
                writer.write(_encode(response, head_only=method == "HEAD"))
                await writer.drain()
        except ConnectionError:
            pass  # the client went away: nobody to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_and_answer(
        self, reader: asyncio.StreamReader
    ) -> tuple[HttpResponse | None, str]:
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return HttpResponse(431, b"request head too large\n"), "GET"
        except (asyncio.IncompleteReadError, TimeoutError):
            return None, ""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return HttpResponse(400, b"bad request line\n"), "GET"
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path, _, query = target.partition("?")
        return await self.dispatch(HttpRequest(method, path, query, headers)), method

    # --- dispatch, shared by both ways in --------------------------------------------------------
    async def dispatch(self, request: HttpRequest) -> HttpResponse:
        """The response to `request` (used by the port server and the ASGI app alike)."""
        handler = self.routes.get(request.path)
        if handler is None:
            return HttpResponse(404, b"not found\n")
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        try:
            return await handler(request)
        except Exception:
            log.exception("endpoint handler failed", path=request.path)
            return HttpResponse(500, b"internal error\n")

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """This endpoint as an ASGI 3 application, to mount in an existing web app.

        Paths are matched after the mount prefix (``scope["root_path"]``) is removed.
        """
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        request = HttpRequest(
            scope["method"], path, scope.get("query_string", b"").decode("latin-1"), headers
        )
        response = await self.dispatch(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.content_type.encode()),
                    (b"content-length", str(len(response.body)).encode()),
                    *((k.encode(), v.encode()) for k, v in response.headers),
                ],
            }
        )
        body = b"" if request.method == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})


def _encode(response: HttpResponse, *, head_only: bool) -> bytes:
    try:
        phrase = http.HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class ServesPages:
    """For middleware that also serve operator pages (`Status`, `PrometheusMetrics`).

    Subclasses define `routes`; this gives them `serve()` on a port of their own,
    `asgi()` to mount the pages in a web app, and `_stop_serving()` for their `aclose()`.
    """

    _serving: HttpEndpoint | None = None
    _mounted: HttpEndpoint | None = None

    @property
    def routes(self) -> dict[str, RouteHandler]:
        raise NotImplementedError

    @property
    def serving_url(self) -> str | None:
        return self._serving.url if self._serving is not None else None

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> HttpEndpoint:
        """Serve the pages on `host`:`port` (0: a free port; see the endpoint's ``url``)."""
        if self._serving is not None:
            raise UsageError(f"already serving on {self._serving.url}")
        self._serving = await HttpEndpoint(self.routes).start(host, port)
        return self._serving

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The pages as an ASGI app (mount it where the web app wants it)."""
        if self._mounted is None:
            self._mounted = HttpEndpoint(self.routes)
        await self._mounted.asgi(scope, receive, send)

    async def _stop_serving(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            await serving.aclose()
