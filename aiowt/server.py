"""`Server`: routes, the middleware chain and handler actors on top of the WebTransport endpoint.

The composition root: the one module that puts the three layers together. The
transport below knows nothing of middleware or actors beyond the `on_request`
callback it calls with each valid CONNECT; this module matches the route, runs the
route's chain (built once, at start) and, at its end, the route's handler actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from aiowt.actors import Handler, Services, run_session
from aiowt.actors.backend import Backend, InProcess
from aiowt.middleware import CallNext, Chain, Closable, Middleware, UsesServices, build_chain
from aiowt.transport import (
    CloseCode,
    ConnectionLimits,
    Key,
    Rejected,
    Session,
    SessionClosedError,
    SessionContext,
    UsageError,
    wait_close_delivered,
)
from aiowt.transport.endpoint import IncomingSession, Listener, listen
from aiowt.transport.engine import QuicOptions, check_engine, default_engine
from aiowt.transport.framing import DEFAULT_MAX_MESSAGE_SIZE
from aiowt.transport.memory import connect_in_memory
from aiowt.transport.tls import SelfSignedCertificate, certificate_hashes, generate_self_signed
from aiowt.transport.websocket import (
    IncomingWebSocket,
    WebSocketListener,
    listen_websocket,
    server_ssl_context,
)

from .routing import Route, RouteGroup, Router

__all__ = ["Server"]

log = structlog.get_logger("aiowt.server")

_CLOSE_DELIVERY_TIMEOUT = 1.0
"""Seconds shutdown waits for the peers to acknowledge the GOING_AWAY capsules."""
_CLOSE_LINGER = 0.25
"""Seconds between the last session's close being answered and CONNECTION_CLOSE. A
browser's network stack answers the close capsule before its page has seen it, and a
CONNECTION_CLOSE right behind then reaches the page first: Chromium 156 reported
"Connection lost" instead of GOING_AWAY in about one shutdown in fifteen on an idle
machine (tests/e2e/test_browser_chat.py), none in 25 with a 50 ms linger."""

Incoming = IncomingSession | IncomingWebSocket
"""A session request waiting for its verdict, over HTTP/3 or WebSocket."""

INCOMING: Key[Incoming] = Key("aiowt.incoming")
"""The pending CONNECT of a context; only the terminal step uses it."""

SessionHook = Callable[[SessionContext], Awaitable[None] | None]


class Server:
    """A WebTransport server: `use()` global middleware, `route()` handlers, `serve()`.

    Middleware run in the order of seed 000: global `use()` in the order added, then the
    route's, then the handler; code after `await call_next(ctx)` runs when the session
    ends. The chain is built once, when the server starts, and frozen after.

    The server's shared actors (`Services`: the metrics collector, the rate-limit and
    session registries) are started with it by its `backend` (in process by default;
    `RedisBackend` shares the session limits between processes and machines), unless
    `services` are given, and handed to every middleware that uses them
    (`UsesServices`) before the first session.
    """

    def __init__(
        self,
        *,
        host: str = "::",
        port: int = 4433,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        certificate: SelfSignedCertificate | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        send_buffer_high: int = 4 * 1024 * 1024,
        max_inbox_bytes: int = 16 * 1024 * 1024,
        idle_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
        reuse_port: bool = False,
        connection_limits: ConnectionLimits | None = None,
        services: Services | None = None,
        backend: Backend | None = None,
        engine: str | None = None,
        websocket: bool = False,
        websocket_port: int | None = None,
        websocket_tls: bool = True,
    ) -> None:
        if engine is not None:
            check_engine(engine)
        if (cert_file is None) != (key_file is None):
            raise UsageError("give both cert_file and key_file, or neither")
        self.host = host
        self.port = port
        self.engine = engine or default_engine()
        """The QUIC library under the server: `aioquic` or `qh3` (default: `$AIOWT_ENGINE`,
        else aioquic)."""
        self.websocket = websocket
        """Also serve the same routes over WebSocket, on TCP (docs/websocket.md)."""
        self.websocket_port = websocket_port
        """The TCP port for WebSocket (default: the QUIC listener's port number)."""
        self.websocket_tls = websocket_tls
        """wss:// with the server's certificate; False serves plain ws:// (behind a proxy
        that terminates TLS, or on localhost in development)."""
        self._websocket_listener: WebSocketListener | None = None
        self._cert_file = cert_file
        self._key_file = key_file
        self.certificate = certificate
        self.max_message_size = max_message_size
        self.send_buffer_high = send_buffer_high
        self.max_inbox_bytes = max_inbox_bytes
        self.idle_timeout = idle_timeout
        self.shutdown_timeout = shutdown_timeout
        self.reuse_port = reuse_port
        self.connection_limits = connection_limits or ConnectionLimits()
        if services is not None and not isinstance(services, Services):
            raise UsageError(f"services must be aiowt.actors.Services, got {services!r}")
        if services is not None and backend is not None:
            raise UsageError("give the server its services or a backend to start them, not both")
        self.backend: Backend = backend if backend is not None else InProcess()
        """Where the services this server starts keep their state (set it before start)."""
        self._given_services = services
        self._services: Services | None = None
        self._running = False
        self._middleware: list[Middleware] = []
        self._router = Router()
        self._chains: dict[str, Chain] = {}
        self._listener: Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: dict[Session, asyncio.Future[None]] = {}
        self._stopped: asyncio.Event | None = None
        self._frozen = False
        self._memory_options: QuicOptions | None = None
        self._pems: tuple[bytes, bytes] | None = None
        self.on_connect: list[SessionHook] = []
        """Called with the context once a session is accepted, before its handler starts."""
        self.on_disconnect: list[SessionHook] = []
        """Called with the context after a session's handler has stopped."""
        self.on_startup: list[Callable[[], Awaitable[None] | None]] = []
        """Called once the server listens (start services that need the loop here)."""
        self.on_shutdown: list[Callable[[], Awaitable[None] | None]] = []
        """Called last in `shutdown()`, after sessions ended and middleware closed."""

    def __repr__(self) -> str:
        return f"Server(host={self.host!r}, port={self.port}, routes={len(self._router)})"

    def use_certificate_files(self, cert_file: str | Path, key_file: str | Path) -> None:
        """Serve with a certificate chain and key from PEM files instead of a self-signed one."""
        self._check_not_frozen()
        self._cert_file, self._key_file = cert_file, key_file

    @property
    def certificate_files(self) -> tuple[str | Path, str | Path] | None:
        """The PEM certificate chain and key files served, if any (else self-signed)."""
        if self._cert_file is None or self._key_file is None:
            return None
        return self._cert_file, self._key_file

    # --- configuration -------------------------------------------------------------------------
    def use(self, *middleware: Middleware) -> Server:
        """Add global middleware, run before every route's own, in the order added."""
        self._check_not_frozen()
        self._middleware.extend(middleware)
        return self

    def route(self, pattern: str, handler: type[Handler], *middleware: Middleware) -> Server:
        """Serve `pattern` (`/chat/{room}`, `/files/{path...}`) with a `Handler` subclass."""
        self._check_not_frozen()
        self._router.add(pattern, handler, tuple(middleware))
        return self

    def group(self, prefix: str, *middleware: Middleware) -> RouteGroup:
        """Routes under `prefix` that share `middleware` (placed before each route's own)."""
        self._check_not_frozen()
        return RouteGroup(self._router, prefix, tuple(middleware))

    def _check_not_frozen(self) -> None:
        if self._frozen:
            raise UsageError("the server has started; its routes and middleware are frozen")

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise UsageError("the server is not listening")
        return self._listener.address

    @property
    def websocket_listener(self) -> WebSocketListener:
        """The WebSocket listener (its `connections`); `UsageError` when not listening."""
        if self._websocket_listener is None:
            raise UsageError("the server is not listening for WebSocket")
        return self._websocket_listener

    @property
    def websocket_address(self) -> tuple[str, int]:
        """The WebSocket listener's (host, port); `UsageError` when it is not listening."""
        if self._websocket_listener is None:
            raise UsageError("the server is not listening for WebSocket")
        return self._websocket_listener.address

    @property
    def services(self) -> Services:
        """The shared actors this server hands its middleware (started with the server)."""
        services = self._services or self._given_services
        if services is None:
            raise UsageError("the server's services start with it; start the server first")
        return services

    @property
    def listener(self) -> Listener:
        """The listening endpoint (its `connections`); `UsageError` when not listening."""
        if self._listener is None:
            raise UsageError("the server is not listening")
        return self._listener

    @property
    def live_sessions(self) -> int:
        """How many sessions are accepted and not yet ended."""
        return len(self._live)

    @property
    def sessions(self) -> tuple[Session, ...]:
        """The live sessions, in the order they were accepted."""
        return tuple(self._live)

    @property
    def chains(self) -> Mapping[str, Chain]:
        """Route pattern → its built chain (global middleware, then the route's); empty
        until the server starts."""
        return types.MappingProxyType(self._chains)

    async def wait_idle(self) -> None:
        """Wait until no session is live (each one's middleware after-parts have run)."""
        while self._live or self._tasks:
            await asyncio.wait([*self._live.values(), *self._tasks])

    # --- running -------------------------------------------------------------------------------
    def _prepare(self) -> QuicOptions:
        """Freeze routes and middleware, build the chains once, start and hand out the
        services, load the certificate."""
        if not self._frozen:
            self._frozen = True
            self._router.freeze()
            self._stopped = asyncio.Event()
            for route in self._router.routes():
                self._chains[route.pattern] = build_chain(
                    (*self._middleware, *route.middleware), self._terminal_for(route)
                )
        if self._services is None:
            self._services = self._given_services or self.backend.start()
            self._hand_out_services(self._services)
        self._running = True
        if self._cert_file is not None and self._key_file is not None:
            cert_pem = Path(self._cert_file).read_bytes()
            key_pem = Path(self._key_file).read_bytes()
        else:
            if self.certificate is None:
                self.certificate = generate_self_signed()
            cert_pem, key_pem = self.certificate.cert_pem, self.certificate.key_pem
        self._pems = (cert_pem, key_pem)
        return QuicOptions(
            is_client=False,
            idle_timeout=self.idle_timeout,
            cert_pem=cert_pem,
            key_pem=key_pem,
            max_sessions=self.connection_limits.max_sessions_per_connection,
        )

    def _hand_out_services(self, services: Services) -> None:
        """Give the services to each middleware that uses them, named by its place."""
        placed: dict[int, tuple[str, Middleware]] = {}
        for index, middleware in enumerate(self._middleware):
            placed.setdefault(id(middleware), (f"use[{index}]", middleware))
        for route in self._router.routes():
            for index, middleware in enumerate(route.middleware):
                placed.setdefault(id(middleware), (f"{route.pattern}[{index}]", middleware))
        for name, middleware in placed.values():
            if isinstance(middleware, UsesServices):
                middleware.use_services(services, name)

    async def start(self) -> None:
        """Bind, build the chains, and begin accepting. Returns once listening."""
        if self._listener is not None:
            raise UsageError("the server is already started")
        options = self._prepare()
        self._listener = await listen(
            self.host,
            self.port,
            options,
            self._on_request,
            engine=self.engine,
            session_options=self._session_options(),
            limits=self.connection_limits,
            reuse_port=self.reuse_port,
        )
        if self.websocket:
            await self._listen_websocket()
        for hook in self.on_startup:
            await _call_startup_hook(hook)
        host, port = self._listener.address
        log.info(
            "listening",
            host=host,
            port=port,
            websocket_port=self.websocket_address[1] if self.websocket else None,
            backend=self.backend.location,
            engine=self.engine,
            routes=[r.pattern for r in self._router.routes()],
            cert_sha256=(self._certificate_hashes() or (None,))[0],
        )

    async def _listen_websocket(self) -> None:
        assert self._listener is not None
        assert self._pems is not None
        port = self.websocket_port if self.websocket_port is not None else self.address[1]
        try:
            self._websocket_listener = await listen_websocket(
                # "::" alone would be IPv6 only for TCP; None binds every address.
                None if self.host in ("::", "", "0.0.0.0") else self.host,
                port,
                self._on_request,
                ssl_context=server_ssl_context(*self._pems) if self.websocket_tls else None,
                session_options=self._session_options(),
                limits=self.connection_limits,
                reuse_port=self.reuse_port,
                idle_timeout=self.idle_timeout,
            )
        except OSError as exc:
            self._listener.close()
            self._listener = None
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"tcp port {port} is in use, so WebSocket cannot listen there: stop what"
                    " holds it or choose another websocket_port (--websocket-port)"
                ) from None
            raise
        except BaseException:
            self._listener.close()
            self._listener = None
            raise

    async def connect_in_memory(
        self, path: str, *, headers: list[tuple[str, str]] | None = None
    ) -> Session:
        """A client session to this server's routes through an in-memory QUIC connection.

        Everything but the socket is real: the handshake, routing, middleware, handler
        actor and the wire format. The server need not be listening; its routes and
        middleware are frozen by the first call, as by `start()`.
        """
        if self._memory_options is None:
            self._memory_options = self._prepare()
        return await connect_in_memory(
            self._memory_options,
            self._on_request,
            path,
            engine=self.engine,
            headers=headers,
            session_options=self._session_options(),
            limits=self.connection_limits,
        )

    def _session_options(self) -> dict[str, Any]:
        return {
            "max_message_size": self.max_message_size,
            "send_buffer_high": self.send_buffer_high,
            "send_buffer_low": min(self.send_buffer_high // 4, 256 * 1024),
            "max_inbox_bytes": self.max_inbox_bytes,
        }

    def banner(self) -> str:
        """What a person needs to connect: the URL, and the hashes for a browser."""
        host, port = self.address
        shown = "localhost" if host in ("::", "0.0.0.0", "::1", "127.0.0.1") else host
        lines = [f"aiowt serving WebTransport on https://{shown}:{port} (udp {host})"]
        if self._websocket_listener is not None:
            scheme = "wss" if self.websocket_tls else "ws"
            ws_port = self._websocket_listener.address[1]
            lines.append(f"  and WebSocket on {scheme}://{shown}:{ws_port} (tcp)")
        lines += [f"  route {route.pattern}" for route in self._router.routes()]
        hashes = self._certificate_hashes()
        if hashes is not None:
            sha256_hex, spki_b64 = hashes
            lines.append(f"  certificate sha256 (serverCertificateHashes): {sha256_hex}")
            lines.append(f"  spki sha256 (--ignore-certificate-errors-spki-list): {spki_b64}")
        return "\n".join(lines)

    def _certificate_hashes(self) -> tuple[str, str] | None:
        """(sha256 hex, spki sha256 base64) of the certificate served, self-signed or not."""
        if self.certificate is not None:
            return self.certificate.sha256_hex, self.certificate.spki_sha256_b64
        if self._cert_file is None:
            return None
        sha256, spki_b64 = certificate_hashes(Path(self._cert_file).read_bytes())
        return sha256.hex(), spki_b64

    async def serve(self, *, print_banner: bool = False) -> None:
        """Start, then run until `shutdown()` (or cancellation, which shuts down too)."""
        await self.start()
        if print_banner:
            print(self.banner(), flush=True)
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await self.shutdown()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully. Blocks."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, self._request_stop)
            await self.serve(print_banner=True)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    def _request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, close live sessions with GOING_AWAY, wait for them, close.

        Handlers get until `timeout` (default `shutdown_timeout`) to finish their
        `on_stop`; what is left after that is cancelled.
        """
        listener = self._listener
        self._listener = None
        if not self._running:
            return
        self._running = False
        self._memory_options = None
        if self._stopped is not None:
            self._stopped.set()
        websocket_listener, self._websocket_listener = self._websocket_listener, None
        if listener is not None:
            listener.stop_accepting()
        if websocket_listener is not None:
            websocket_listener.stop_accepting()
        closing = list(self._live)
        for session in closing:
            with contextlib.suppress(SessionClosedError):
                session.close(CloseCode.GOING_AWAY, "server shutting down")
        waiting = list(self._live.values()) + list(self._tasks)
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout or self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        # The close capsules must be acknowledged before CONNECTION_CLOSE overtakes them
        # (under a full congestion window they may not even have left yet).
        await wait_close_delivered(closing, _CLOSE_DELIVERY_TIMEOUT)
        if closing:
            await asyncio.sleep(_CLOSE_LINGER)
        if listener is not None:
            listener.close()
        if websocket_listener is not None:
            await websocket_listener.close()
        await self._close_middleware()
        for hook in self.on_shutdown:
            try:
                await _call_startup_hook(hook)
            except Exception:
                log.exception("on_shutdown hook failed")
        services, self._services = self._services, None
        if services is not None and services is not self._given_services:
            await services.stop()
        log.info("stopped")

    async def _close_middleware(self) -> None:
        """Middleware that own services or endpoints release them (`aclose()`), once each."""
        seen: set[int] = set()
        for middleware in (
            *self._middleware,
            *(m for r in self._router.routes() for m in r.middleware),
        ):
            if not isinstance(middleware, Closable) or id(middleware) in seen:
                continue
            seen.add(id(middleware))
            try:
                await middleware.aclose()
            except Exception:
                log.exception("middleware aclose failed", middleware=repr(middleware))

    # --- one request ------------------------------------------------------------------------------
    def _on_request(self, incoming: Incoming) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, incoming: Incoming) -> None:
        match = self._router.match(incoming.request.path)
        if match is None:
            incoming.reject(404, "no route for this path")
            return
        ctx = SessionContext(
            request=incoming.request,
            route_pattern=match.route.pattern,
            path_params=match.params,
        )
        ctx.set(INCOMING, incoming)
        try:
            await self._chains[match.route.pattern](ctx)
        except Rejected as rejection:
            self._reject(incoming, ctx, rejection.status, rejection.reason, rejection.headers)
        except asyncio.CancelledError:
            self._reject(incoming, ctx, 503, "server shutting down")
            raise
        except Exception:
            log.exception("session failed", **ctx.ids)
            self._reject(incoming, ctx, 500, "internal server error")
        else:
            if not incoming.decided:
                log.error("middleware returned without a verdict", **ctx.ids)
                self._reject(incoming, ctx, 500, "no verdict")

    @staticmethod
    def _reject(
        incoming: Incoming,
        ctx: SessionContext,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if incoming.decided:
            return
        ctx.status = status
        incoming.reject(status, reason, (*ctx.response_headers, *headers))

    def _terminal_for(self, route: Route) -> CallNext:
        handler_class = route.handler

        async def accept_and_run(ctx: SessionContext) -> None:
            incoming = ctx.get(INCOMING)
            try:
                session = incoming.accept(ctx.response_headers)
            except SessionClosedError:
                # Not an error of ours: logged as nginx does, "499 client closed request".
                log.info("client left before the verdict", **ctx.ids)
                ctx.status = 499
                return
            ctx.session = session
            ctx.status = 200
            ctx.accepted_at = time.monotonic()
            session.install_taps(ctx.taps)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._live[session] = done
            try:
                for hook in self.on_connect:
                    await _call_hook(hook, ctx)
                # Every log line inside the handler carries the session's ids.
                with structlog.contextvars.bound_contextvars(**ctx.ids):
                    failure = await run_session(handler_class, ctx, session)
            finally:
                ctx.close_info = session.close_info
                self._live.pop(session, None)
                if not done.done():
                    done.set_result(None)
                for hook in self.on_disconnect:
                    try:
                        await _call_hook(hook, ctx)
                    except Exception:
                        log.exception("on_disconnect hook failed", **ctx.ids)
            if failure is not None:
                raise failure

        return accept_and_run


async def _call_startup_hook(hook: Callable[[], Awaitable[None] | None]) -> None:
    result = hook()
    if result is not None:
        await result


async def _call_hook(hook: SessionHook, ctx: SessionContext) -> None:
    result = hook(ctx)
    if result is not None:
        await result
