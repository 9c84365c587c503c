"""The chat demo: rooms over WebTransport, and a browser page to use them.

Run it with `make demo` (which builds the browser client, clients/js, into
`static/vendor/`, then runs `python -m examples.chat`); it prints the URL to open.
`aiowt run examples.chat.server:server` serves the WebTransport side alone. With
`--backend redis://...` the rooms are shared with every other process on that Redis;
`--workers N` serves from N processes on one port (the first one serves the page).

The protocol (details in `docs/rooms.md`): a session connects to `/chat/{room}?name=...`.
It sends msgpack maps, on a bidirectional stream it opens (length-prefixed frames) or as
datagrams: `{"type": "say", "text": ...}` and `{"type": "typing"}`. The server sends,
on one server-opened unidirectional stream: `history` first, then `join`, `leave`,
`message` and `error` maps; `typing` signals of the others come as datagrams. A name
is unique in its room: a second session with a name a member has is accepted, then
closed with `NAME_TAKEN` and the reason (browsers see a close, never a refused
handshake's reason). The page checks room and name before connecting, against the rules
`ChatGate.rules()` publishes in the page's `/config.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pykka import ActorRef

from aiowt import (
    CloseCode,
    CloseInfo,
    Handler,
    Key,
    Rejected,
    Server,
    Session,
    SessionContext,
    Stream,
)
from aiowt.actors import ServiceHandle, ask, tell_quietly
from aiowt.actors.backend import backend_from_url
from aiowt.actors.outbound import OutboundChannel
from aiowt.actors.rooms import (
    JoinRefused,
    JoinRoom,
    LeaveRoom,
    Member,
    NameTaken,
    Post,
    Room,
    RoomEventDelivered,
    RoomManager,
    RoomSignalDelivered,
    RoomSnapshot,
    Signal,
)
from aiowt.middleware.chain import CallNext
from aiowt.transport.framing import DEFAULT_MAX_MESSAGE_SIZE
from aiowt.transport.tls import certificate_hashes
from aiowt.workers import WORKER_INDEX_ENV, supervise

from .web import ChatWebServer, WebConfig

__all__ = [
    "CHAT",
    "NAME",
    "NAME_TAKEN",
    "ROOM",
    "Chat",
    "ChatConfig",
    "ChatGate",
    "ChatSession",
    "chat",
    "leave_reason",
    "main",
    "serve",
    "server",
]

log = structlog.get_logger("aiowt.examples.chat")

ROOM: Key[str] = Key("chat.room")
"""The validated room name of a chat session (from the `{room}` path parameter)."""
NAME: Key[str] = Key("chat.name")
"""The validated display name of a chat session (from `?name=`, or a guest name)."""
CHAT: Key[Chat] = Key("chat.app")
"""The `Chat` a session belongs to (set by its `on_connect` hook)."""

NAME_TAKEN = 0x4001
"""The chat's close code for a session whose name a member of its room already has.

Outside aiowt's own `CloseCode` range (0x1001..0x100A); the reason says which name and
room, for example ``the name 'ada' is taken in room 'lobby'``.
"""

# The one definition of a valid room name. `\w` is Python's: Unicode letters, digits and
# `_`, which the page's copy (`ChatGate.rules()`) spells `\p{L}\p{N}_` for JavaScript.
_ROOM_PATTERN = r"[\w.\-]{1,64}"
_ROOM_NAME = re.compile(_ROOM_PATTERN)
_ROOM_REASON = "room names are 1-64 letters, digits, '_', '.' or '-'"


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """Limits and sizes of the chat.

    Attributes:
        history_size: messages a room keeps for late joiners.
        max_text_length: characters in one `say`.
        max_name_length: characters in a display name.
        max_outbound_buffer: bytes a session may be behind on its outbound stream
            before it is closed with `CloseCode.SLOW_CONSUMER`.

    """

    history_size: int = 50
    max_text_length: int = 2000
    max_name_length: int = 32
    max_outbound_buffer: int = 1024 * 1024


class ChatGate:
    """Route middleware: validate the room and the name before the session is accepted.

    A bad room name (1 to 64 letters, digits, `_`, `.`, `-`) or name (1 to
    `max_name_length` printable characters, from `?name=`) is refused with 400; a
    missing or blank name becomes `guest-` and the first characters of the session id.
    """

    room_reason = _ROOM_REASON
    """Why a room name is refused (the 400's `aiowt-reason`, and the page's message)."""

    def __init__(self, config: ChatConfig) -> None:
        self.max_name_length = config.max_name_length
        self.requests = 0
        """Session requests that reached the gate (accepted or not)."""

    def __repr__(self) -> str:
        return f"ChatGate(max_name_length={self.max_name_length})"

    @property
    def name_reason(self) -> str:
        """Why a name is refused."""
        return f"names are 1-{self.max_name_length} printable characters"

    def rules(self) -> dict[str, dict[str, str | int]]:
        """The gate's rules for the page (`/config.json`), so it can check before connecting.

        Each rule is a JavaScript regular expression (`u` flag, matched whole) with the
        reason the gate gives. The name's is for the name as sent (trimmed): empty is
        allowed (it becomes a guest name), as here.
        """
        # Python's `str.isprintable()`: no category C or Z character, but the space.
        printable = r"(?:[^\p{C}\p{Z}]| )"
        return {
            "room": {
                "pattern": _ROOM_PATTERN.replace(r"\w", r"\p{L}\p{N}_"),
                "reason": self.room_reason,
            },
            "name": {
                "pattern": f"{printable}{{0,{self.max_name_length}}}",
                "maxLength": self.max_name_length,
                "reason": self.name_reason,
            },
        }

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        self.requests += 1
        room = ctx.path_params.get("room", "")
        if not _ROOM_NAME.fullmatch(room):
            raise Rejected(400, self.room_reason)
        names = ctx.query.get("name", [])
        name = names[-1].strip() if names else ""
        if len(name) > self.max_name_length or not name.isprintable():
            raise Rejected(400, self.name_reason)
        name = name or f"guest-{ctx.session_id[:6]}"
        ctx.set(ROOM, room)
        ctx.set(NAME, name)
        await call_next(ctx)


PAGE_ENV = "AIOWT_CHAT_PAGE"
"""`host:port` where the first worker of `--workers` serves the page."""


class Chat:
    """The chat application: its config and its `RoomManager`, installed on a `Server`.

    The room manager is started on first use, on the loop serving the sessions, with
    the server's rooms (`server.services.rooms`: shared with the other processes on a
    Redis backend), and stopped by `aclose()`.
    """

    def __init__(self, config: ChatConfig | None = None) -> None:
        self.config = config or ChatConfig()
        self.gate = ChatGate(self.config)
        """The route's gate (`gate.requests` counts the session requests it saw)."""
        self._server: Server | None = None
        self._page: ChatWebServer | None = None
        self._rooms: ServiceHandle[RoomManager] = ServiceHandle(None, self._start_rooms, "rooms")

    def __repr__(self) -> str:
        return f"Chat({self.config!r})"

    def install(
        self,
        server: Server,
        pattern: str = "/chat/{room}",
        handler: type[ChatSession] | None = None,
    ) -> Server:
        """Serve chat sessions on `pattern` (it needs a `{room}` parameter).

        `handler` may be a subclass of `ChatSession` (for instance to observe sessions).
        """
        self._server = server
        server.route(pattern, handler or ChatSession, self.gate)
        server.on_connect.append(self.on_connect)
        server.on_startup.append(self._serve_page_in_first_worker)
        server.on_shutdown.append(self.aclose)
        return server

    def web_config(self, port: int, certificate_hashes: tuple[str, ...] = ()) -> WebConfig:
        """What the page is told: where the server is (and its ws:// port, when it serves
        plain WebSocket), and the gate's rules."""
        server = self._server
        websocket_port = None
        if server is not None and server.websocket and not server.websocket_tls:
            websocket_port = server.websocket_address[1]
        return WebConfig(
            port, certificate_hashes, rules=self.gate.rules(), websocket_port=websocket_port
        )

    @property
    def rooms(self) -> ActorRef[RoomManager]:
        """The room manager (started now, on the running loop, if it is not running)."""
        return self._rooms.ref()

    def on_connect(self, ctx: SessionContext) -> None:
        """Server hook: give the session's handler its chat (and start the rooms)."""
        if ROOM in ctx:
            self._rooms.ref()
            ctx.set(CHAT, self)

    async def aclose(self) -> None:
        """Stop the page (if this process served it), the room manager and every room."""
        page, self._page = self._page, None
        if page is not None:
            await page.close()
        await self._rooms.stop()

    def _start_rooms(self) -> ActorRef[RoomManager]:
        rooms = self._server.services.rooms if self._server is not None else None
        return RoomManager.start(
            history_size=self.config.history_size,
            max_frame_size=DEFAULT_MAX_MESSAGE_SIZE,
            rooms=rooms,
        )

    async def _serve_page_in_first_worker(self) -> None:
        """Under `--workers`, the first worker serves the page (see `main`)."""
        where = os.environ.get(PAGE_ENV)
        server = self._server
        if where is None or os.environ.get(WORKER_INDEX_ENV) != "0" or server is None:
            return
        files = server.certificate_files
        hashes: tuple[str, ...] = ()
        if files is not None:
            pem = await asyncio.to_thread(Path(files[0]).read_bytes)
            hashes = (certificate_hashes(pem)[0].hex(),)
        host, _, port = where.rpartition(":")
        config = self.web_config(server.address[1], hashes)
        self._page = ChatWebServer(config, host=host, port=int(port))
        await self._page.start()
        print(f"open {self._page.url()} in a browser (Ctrl-C stops)", flush=True)


class ChatSession(Handler):
    """One chat session: a member of one room.

    It joins its room on start and leaves it when the session ends, however it ends.
    Deliveries from the room are written through an `OutboundChannel`, so a peer that
    falls `max_outbound_buffer` bytes behind is closed with `CloseCode.SLOW_CONSUMER`
    and typing signals it cannot take are dropped.

    Inbound validation: anything that is not a map with a string `type`, and a `say`
    whose `text` is not a string, close the session with `CloseCode.PROTOCOL_ERROR`
    (the client is broken); an empty or too long text and an unknown `type` get an
    `error` message back and the session goes on.
    """

    def __init__(self, ctx: SessionContext, session: Session) -> None:
        super().__init__(ctx, session)
        self.chat = ctx.get(CHAT)
        self.member = Member(ctx.session_id, ctx.get(NAME), self.actor_ref)
        self.room_name = ctx.get(ROOM)
        self.outbound = OutboundChannel(session, max_buffered=self.chat.config.max_outbound_buffer)
        self.room: ActorRef[Room] | None = None
        self._rooms: ActorRef[RoomManager] | None = None

    async def on_start(self) -> None:  # type: ignore[override]
        self._rooms = self.chat.rooms
        join = JoinRoom(self.room_name, self.member, unique_name=True)
        try:
            self.room = await ask(self._rooms, join)
        except NameTaken as taken:
            # Decided by the room manager, which handles joins one at a time: of two
            # simultaneous "ada"s exactly one gets in. Told as the session's close,
            # which (unlike a refused handshake's reason) a browser does receive.
            log.info("name taken", room=self.room_name, name=self.member.name, **self.ctx.ids)
            self.close(NAME_TAKEN, str(taken))

    async def on_stop(self) -> None:  # type: ignore[override]
        if self.room is not None:
            # Told, not asked: nothing to wait for. To the manager it joined through,
            # which may be stopped already when the whole server shuts down.
            reason = self._leave_reason()
            tell_quietly(self._rooms, LeaveRoom(self.room_name, self.member.id, reason))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RoomSnapshot | RoomEventDelivered):
            self.outbound.send_frame(message.frame)
        elif isinstance(message, JoinRefused):
            # A member on another process has the name (the room's Redis script decided).
            log.info("name taken", room=self.room_name, name=self.member.name, **self.ctx.ids)
            self.close(NAME_TAKEN, message.reason)
        elif isinstance(message, RoomSignalDelivered):
            self.outbound.send_datagram(message.payload)
        else:
            return super().on_receive(message)
        return None

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.close(CloseCode.PROTOCOL_ERROR, "expected a msgpack map with a string 'type'")
            return
        # A room stopped under us (the app shutting down) just drops what is said.
        kind = message["type"]
        if kind == "say":
            text = message.get("text")
            if not isinstance(text, str):
                self.close(CloseCode.PROTOCOL_ERROR, "'say' needs a string 'text'")
            elif not text.strip():
                self._error("empty_text", "'say' needs some text")
            elif len(text) > self.chat.config.max_text_length:
                limit = self.chat.config.max_text_length
                self._error("text_too_long", f"text is longer than {limit} characters")
            else:
                tell_quietly(self.room, Post(self.member.id, {"text": text}))
        elif kind == "typing":
            tell_quietly(self.room, Signal(self.member.id, "typing"))
        else:
            self._error(
                "unknown_type", f"unknown message type {kind[:40]!r}; use 'say' or 'typing'"
            )

    def _error(self, code: str, text: str) -> None:
        self.outbound.send_message({"type": "error", "code": code, "error": text})

    def _leave_reason(self) -> str:
        if self.outbound.slow:
            return "slow consumer"
        return leave_reason(self.close_info)


def leave_reason(info: CloseInfo | None) -> str:
    """How a member left, for the `leave` event, from how its session ended."""
    if info is None or info.code == CloseCode.NORMAL:
        return "left"
    if info.code == CloseCode.ABORTED:
        return "disconnected"
    if info.code == CloseCode.GOING_AWAY:
        return "server shutting down"
    try:
        return CloseCode(info.code).name.lower().replace("_", " ")
    except ValueError:
        return f"closed ({info.code})"


chat = Chat()
"""The demo's chat, installed on `server`."""
server = chat.install(Server(websocket=True, websocket_tls=False))
"""The demo's server (`aiowt run examples.chat.server:server`): WebTransport on UDP, and
plain ws:// on TCP (same port) for browsers without WebTransport or UDP. Plain, because
a browser cannot pin a self-signed certificate for a WebSocket; in production put a
TLS-terminating proxy in front (docs/websocket.md)."""


# --- `python -m examples.chat` ----------------------------------------------------------------


async def serve(
    *,
    host: str = "::",
    port: int = 4433,
    http_host: str = "localhost",
    http_port: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the demo's WebTransport server and its page until `stop` is set.

    `http_port` defaults to the WebTransport port + 1 (0 for any free port).
    """
    stop = stop or asyncio.Event()
    server.host, server.port = host, port
    await server.start()
    try:
        wt_port = server.address[1]
        hashes = (server.certificate.sha256_hex,) if server.certificate is not None else ()
        web = ChatWebServer(
            chat.web_config(wt_port, hashes),
            host=http_host,
            port=wt_port + 1 if http_port is None else http_port,
        )
        async with web:
            print(server.banner(), flush=True)
            print(f"chat page on {web.url()}: open it in a browser (Ctrl-C stops)", flush=True)
            await stop.wait()
    finally:
        await server.shutdown()
        await chat.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    """The demo's command line: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m examples.chat", description=__doc__)
    parser.add_argument("--host", default="::", help="WebTransport (UDP) address, default ::")
    parser.add_argument("--port", type=int, default=4433, help="WebTransport port, default 4433")
    parser.add_argument("--http-host", default="localhost", help="page address, default localhost")
    parser.add_argument(
        "--http-port", type=int, default=None, help="page port, default the WebTransport port + 1"
    )
    parser.add_argument(
        "--backend",
        metavar="URL",
        default=None,
        help="share the rooms and limits: a Redis URL (redis://host:6379/0); default memory:",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes on one port (the first serves the page)"
    )
    args = parser.parse_args(argv)
    if args.workers > 1:
        # The workers are `aiowt run` processes; the first one serves the page.
        http_port = args.port + 1 if args.http_port is None else args.http_port
        os.environ[PAGE_ENV] = f"{args.http_host}:{http_port}"
        raise SystemExit(
            supervise(
                "examples.chat.server:server",
                workers=args.workers,
                host=args.host,
                port=args.port,
                backend=args.backend,
            )
        )
    if args.backend is not None:
        server.backend = backend_from_url(args.backend)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(
            host=args.host,
            port=args.port,
            http_host=args.http_host,
            http_port=args.http_port,
            stop=stop,
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
