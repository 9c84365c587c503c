"""Handshake middleware end to end: the real client over QUIC on 127.0.0.1.

Each test checks what a refused client sees (status, reason, headers) and what reaches
the handler of an admitted one (identity, ids, typed keys).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
from typing import Any, ClassVar

import pytest
import structlog
from structlog.testing import capture_logs

from aiowt import Server
from aiowt.actors import Handler
from aiowt.middleware.auth import BasicAuth, BearerAuth, QueryAuth, RequireKey, StaticTokens
from aiowt.middleware.chain import CallNext
from aiowt.middleware.control import ErrorHandler, If
from aiowt.middleware.extract import ExtractHeader, ExtractHeaders, SessionData
from aiowt.middleware.headers import PoweredBy, RequireHeader
from aiowt.middleware.keys import (
    AUTH_SCHEME,
    CLIENT_IP,
    ORIGIN,
    QUERY,
    REMOTE_USER,
    SUBPROTOCOL,
    USER_AGENT,
)
from aiowt.middleware.network import (
    CORS,
    BlockUserAgent,
    ClientIP,
    IPAllowList,
    IPBlockList,
    RequireUserAgent,
)
from aiowt.middleware.request_id import RequestID
from aiowt.middleware.subprotocols import Subprotocols
from aiowt.transport import HandshakeError, Key, Session, SessionContext
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded

SECRET = "tok-alice-0123456789"
tokens = StaticTokens({SECRET: "alice"})


class Reporter(Handler):
    """Hands its session context to the test, which reads what the middleware set."""

    seen: ClassVar[asyncio.Queue[SessionContext]]

    async def on_start(self) -> None:
        self.seen.put_nowait(self.ctx)


@pytest.fixture
def seen() -> asyncio.Queue[SessionContext]:
    Reporter.seen = asyncio.Queue()
    return Reporter.seen


async def handler_ctx(seen: asyncio.Queue[SessionContext]) -> SessionContext:
    async with bounded():
        return await seen.get()


async def refusal(
    client: ClientFactory, server: Server, path: str, **options: Any
) -> HandshakeError:
    with pytest.raises(HandshakeError) as caught:
        await client(server, path, **options)
    return caught.value


def header(error_or_session: HandshakeError | Session, name: str) -> str | None:
    headers = (
        error_or_session.headers
        if isinstance(error_or_session, HandshakeError)
        else error_or_session.request.headers
    )
    return dict(headers).get(name)


# --- authentication -----------------------------------------------------------------------


async def test_bearer_auth(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    server = await make_server(
        lambda s: s.route("/chat", Reporter, BearerAuth(tokens, realm="chat"))
    )
    with capture_logs() as logs:
        missing = await refusal(client, server, "/chat")
        # 4 KB: qh3's QPACK encoder fails on values of some 6 KB (docs/engines.md).
        huge = await refusal(
            client, server, "/chat", headers=[("authorization", "Bearer " + "é" * 2000)]
        )
        wrong = await refusal(
            client, server, "/chat", headers=[("authorization", "Bearer not-the-token")]
        )
        await client(server, "/chat", headers=[("authorization", f"bearer {SECRET}")])
    assert (missing.status, missing.reason) == (401, "missing bearer token")
    assert header(missing, "www-authenticate") == 'Bearer realm="chat"'
    assert (huge.status, huge.reason) == (401, "malformed authorization header")
    assert header(huge, "www-authenticate") == 'Bearer realm="chat", error="invalid_request"'
    assert (wrong.status, wrong.reason) == (401, "invalid bearer token")
    ctx = await handler_ctx(seen)
    assert (ctx.identity, ctx.get(AUTH_SCHEME)) == ("alice", "bearer")
    assert [e["reason"] for e in logs if e["event"] == "refused: authentication"] == [
        "missing bearer token",
        "malformed authorization header",
        "invalid bearer token",
    ]
    assert SECRET not in repr(logs)


async def test_query_auth_for_browsers(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    server = await make_server(lambda s: s.route("/chat", Reporter, QueryAuth("token", tokens)))
    missing = await refusal(client, server, "/chat?room=1")
    assert (missing.status, missing.reason) == (401, "missing token in query parameter 'token'")
    malformed = await refusal(client, server, "/chat?token=%zz")
    assert (malformed.status, malformed.reason) == (
        400,
        "malformed query string: invalid percent-escape",
    )
    wrong = await refusal(client, server, "/chat?token=nope")
    assert (wrong.status, wrong.reason) == (401, "invalid token")
    await client(server, f"/chat?room=1&token={SECRET}")
    ctx = await handler_ctx(seen)
    assert (ctx.identity, ctx.get(AUTH_SCHEME)) == ("alice", "query")


async def test_require_key(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    server = await make_server(
        lambda s: s.route("/svc", Reporter, RequireKey("x-api-key", SECRET, identity="svc-a"))
    )
    assert (await refusal(client, server, "/svc")).reason == "missing API key"
    wrong = await refusal(client, server, "/svc", headers=[("x-api-key", SECRET + "x")])
    assert (wrong.status, wrong.reason) == (401, "invalid API key")
    await client(server, "/svc", headers=[("x-api-key", SECRET)])
    assert (await handler_ctx(seen)).identity == "svc-a"


async def test_basic_auth(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    passwords = {"alice": "wonderland", "bob": "builder"}

    def authenticate(user: str, password: str) -> bool:
        return user in passwords and password == passwords[user]

    async def admins_only(user: str, ctx: SessionContext) -> bool:
        return user == "alice"

    def basic(user: str, password: str) -> list[tuple[str, str]]:
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        return [("authorization", f"Basic {encoded}")]

    server = await make_server(
        lambda s: s.route("/admin", Reporter, BasicAuth("admin area", authenticate, admins_only))
    )
    realm = 'Basic realm="admin area", charset="UTF-8"'
    missing = await refusal(client, server, "/admin")
    assert (missing.status, header(missing, "www-authenticate")) == (401, realm)
    garbled = await refusal(client, server, "/admin", headers=[("authorization", "Basic %%%")])
    assert (garbled.status, garbled.reason) == (401, "malformed basic credentials")
    assert header(garbled, "www-authenticate") == realm
    wrong = await refusal(client, server, "/admin", headers=basic("alice", "nope"))
    assert (wrong.status, wrong.reason) == (401, "invalid credentials")
    bob = await refusal(client, server, "/admin", headers=basic("bob", "builder"))
    assert (bob.status, bob.reason) == (403, "not authorized")
    await client(server, "/admin", headers=basic("alice", "wonderland"))
    ctx = await handler_ctx(seen)
    assert (ctx.identity, ctx.get(REMOTE_USER)) == ("alice", "alice")


# --- network and origin -------------------------------------------------------------------


async def test_ip_allow_list(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    def routes(s: Server) -> None:
        s.route("/lan", Reporter, IPAllowList("127.0.0.0/8", "::1"))
        s.route("/office", Reporter, IPAllowList("10.0.0.0/8", "2001:db8::/32"))

    server = await make_server(routes)
    await client(server, "/lan")
    await handler_ctx(seen)
    denied = await refusal(client, server, "/office")
    assert (denied.status, denied.reason) == (403, "address not allowed")


async def test_ip_block_list_updated_at_runtime_from_a_thread(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    blocks = IPBlockList("192.0.2.0/24")
    server = await make_server(lambda s: s.route("/chat", Reporter, blocks))
    await client(server, "/chat")
    await handler_ctx(seen)
    await asyncio.to_thread(blocks.add, "127.0.0.0/8")
    blocked = await refusal(client, server, "/chat")
    assert (blocked.status, blocked.reason) == (403, "address blocked")
    assert blocks.remove("127.0.0.0/8")
    await client(server, "/chat")
    await handler_ctx(seen)


async def test_forwarded_for_is_only_believed_from_trusted_proxies(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    def routes(s: Server) -> None:
        s.route("/direct", Reporter, ClientIP(), IPBlockList("203.0.113.0/24"))
        s.route(
            "/proxied",
            Reporter,
            ClientIP(trusted_proxies=["127.0.0.1"]),
            IPBlockList("203.0.113.0/24"),
        )

    server = await make_server(routes)
    loopback = ipaddress.ip_address("127.0.0.1")

    # An untrusted peer cannot spoof its way into (or out of) a client address.
    with capture_logs() as logs:
        await client(server, "/direct", headers=[("x-forwarded-for", "198.51.100.7")])
    assert (await handler_ctx(seen)).get(CLIENT_IP) == loopback
    assert any(e["event"] == "ignored forwarding header from an untrusted peer" for e in logs)
    await client(server, "/direct", headers=[("x-forwarded-for", "203.0.113.9")])
    assert (await handler_ctx(seen)).get(CLIENT_IP) == loopback

    # Through a trusted proxy the forwarded client is believed, and filtered.
    await client(server, "/proxied", headers=[("x-forwarded-for", "198.51.100.7")])
    assert (await handler_ctx(seen)).get(CLIENT_IP) == ipaddress.ip_address("198.51.100.7")
    blocked = await refusal(
        client, server, "/proxied", headers=[("x-forwarded-for", "203.0.113.9")]
    )
    assert (blocked.status, blocked.reason) == (403, "address blocked")
    # What the client wrote before the proxy appended its address is not read.
    await client(server, "/proxied", headers=[("x-forwarded-for", "203.0.113.9, 198.51.100.8")])
    assert (await handler_ctx(seen)).get(CLIENT_IP) == ipaddress.ip_address("198.51.100.8")
    with capture_logs() as logs:
        malformed = await refusal(
            client, server, "/proxied", headers=[("x-forwarded-for", "198.51.100.7, ???")]
        )
    assert (malformed.status, malformed.reason) == (400, "malformed x-forwarded-for")
    assert any(e["event"] == "refused: malformed x-forwarded-for" for e in logs)


async def test_user_agent_filters(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    def routes(s: Server) -> None:
        s.route("/app", Reporter, RequireUserAgent(), BlockUserAgent("evilbot"))

    server = await make_server(routes)
    none = await refusal(client, server, "/app")
    assert (none.status, none.reason) == (403, "user agent required")
    bot = await refusal(client, server, "/app", headers=[("user-agent", "EvilBot/2.0")])
    assert (bot.status, bot.reason) == (403, "user agent blocked")
    await client(server, "/app", headers=[("user-agent", "app/1.0")])
    await handler_ctx(seen)


async def test_origin_check(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    def previews(origin: str, ctx: SessionContext) -> bool | None:
        return True if origin.endswith(".preview.example.com") else None

    def routes(s: Server) -> None:
        s.route("/chat", Reporter, CORS(["https://app.example.com"], validator=previews))
        s.route("/browser-only", Reporter, CORS(["https://app.example.com"], allow_missing=False))

    server = await make_server(routes)
    await client(server, "/chat", headers=[("origin", "https://app.example.com")])
    await client(server, "/chat", headers=[("origin", "https://pr-1.preview.example.com")])
    await client(server, "/chat")  # no origin: not a browser, admitted by default
    for _ in range(3):
        await handler_ctx(seen)
    other = await refusal(client, server, "/chat", headers=[("origin", "https://evil.example")])
    assert (other.status, other.reason) == (403, "origin not allowed")
    missing = await refusal(client, server, "/browser-only")
    assert (missing.status, missing.reason) == (403, "origin required")


# --- request data -------------------------------------------------------------------------

BOUND: Key[dict[str, Any]] = Key("test.bound_contextvars")


async def peek_contextvars(ctx: SessionContext, call_next: CallNext) -> None:
    ctx.set(BOUND, structlog.contextvars.get_contextvars())
    await call_next(ctx)


# Its id carries a control character, which HTTP/1.1 (WebSocket) cannot carry at all.
@pytest.mark.quic
async def test_request_id(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    def routes(s: Server) -> None:
        s.use(RequestID())
        s.route("/chat", Reporter, peek_contextvars)
        s.route("/locked", Reporter, RequireKey("x-api-key", SECRET))

    server = await make_server(routes)
    session = await client(server, "/chat", headers=[("x-request-id", 'trace 42\x01<"x">')])
    ctx = await handler_ctx(seen)
    assert ctx.request_id == "trace42x"
    assert header(session, "x-request-id") == "trace42x"
    assert ctx.get(BOUND)["request_id"] == "trace42x"

    session = await client(server, "/chat")
    ctx = await handler_ctx(seen)
    assert ctx.request_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", ctx.request_id)
    assert header(session, "x-request-id") == ctx.request_id

    long = await refusal(client, server, "/locked", headers=[("x-request-id", "r" * 500)])
    assert long.status == 401
    assert header(long, "x-request-id") == "r" * 128  # on the rejection too, truncated


async def test_extract_headers_and_session_data(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    tenant: Key[str] = Key("tenant")
    trace: Key[str] = Key("trace")
    region: Key[str] = Key("region")

    def routes(s: Server) -> None:
        s.route(
            "/chat",
            Reporter,
            SessionData(),
            ExtractHeader("x-tenant", tenant),
            ExtractHeaders({"traceparent": trace, "x-region": region}),
        )

    server = await make_server(routes)
    headers = [
        ("user-agent", "app/3"),
        ("origin", "https://app.example.com"),
        ("x-tenant", "acme"),
        ("traceparent", "00-abc-def-01"),
    ]
    await client(server, "/chat?room=lobby&tag=a&tag=b&q=%C3%A9t%C3%A9", headers=headers)
    ctx = await handler_ctx(seen)
    assert (ctx.get(USER_AGENT), ctx.get(ORIGIN)) == ("app/3", "https://app.example.com")
    assert dict(ctx.get(QUERY).items()) == {"room": ("lobby",), "tag": ("a", "b"), "q": ("été",)}
    assert (ctx.get(tenant), ctx.get(trace), ctx.get(region, None)) == (
        "acme",
        "00-abc-def-01",
        None,
    )
    malformed = await refusal(client, server, "/chat?room=%E0%A4%A")
    assert (malformed.status, malformed.reason) == (
        400,
        "malformed query string: invalid percent-escape",
    )


async def test_require_header_on_matching_paths(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    def routes(s: Server) -> None:
        s.use(RequireHeader("x-api-version", r"^v[12]$", status=412, path_pattern=r"^/api/"))
        s.route("/api/chat", Reporter)
        s.route("/public", Reporter)

    server = await make_server(routes)
    await client(server, "/public")
    await handler_ctx(seen)
    missing = await refusal(client, server, "/api/chat")
    assert (missing.status, missing.reason) == (412, "missing required header x-api-version")
    bad = await refusal(client, server, "/api/chat", headers=[("x-api-version", "v3")])
    assert (bad.status, bad.reason) == (412, "header x-api-version has an unacceptable value")
    await client(server, "/api/chat", headers=[("x-api-version", "v2")])
    await handler_ctx(seen)


async def test_if_and_powered_by(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    def from_gateway(ctx: SessionContext) -> bool:
        return ctx.request.header("x-gateway") == "1"

    def routes(s: Server) -> None:
        s.use(PoweredBy("aiowt-test"))
        s.route("/chat", Reporter, If(from_gateway, None, IPAllowList("10.0.0.0/8")))

    server = await make_server(routes)
    session = await client(server, "/chat", headers=[("x-gateway", "1")])
    await handler_ctx(seen)
    assert header(session, "x-powered-by") == "aiowt-test"
    direct = await refusal(client, server, "/chat")
    assert (direct.status, direct.reason) == (403, "address not allowed")
    assert header(direct, "x-powered-by") == "aiowt-test"


async def test_error_handler(make_server: ServerFactory, client: ClientFactory) -> None:
    async def faulty(ctx: SessionContext, call_next: CallNext) -> None:
        fault = ctx.request.header("x-fault")
        if fault == "permission":
            raise PermissionError("tenant acme may not")
        if fault == "crash":
            raise RuntimeError("db password is hunter2")
        await call_next(ctx)

    def routes(s: Server) -> None:
        s.route("/quiet", Reporter, ErrorHandler({PermissionError: 403}), faulty)
        s.route("/verbose", Reporter, ErrorHandler(verbose=True), faulty)

    server = await make_server(routes)
    mapped = await refusal(client, server, "/quiet", headers=[("x-fault", "permission")])
    assert (mapped.status, mapped.reason) == (403, "forbidden")
    with capture_logs() as logs:
        crash = await refusal(client, server, "/quiet", headers=[("x-fault", "crash")])
    assert (crash.status, crash.reason) == (500, "internal server error")
    assert "hunter2" not in repr(crash.headers)
    assert any(e["event"] == "refused: unhandled exception before accept" for e in logs)
    verbose = await refusal(client, server, "/verbose", headers=[("x-fault", "crash")])
    assert (verbose.status, verbose.reason) == (500, "RuntimeError: db password is hunter2")


async def test_subprotocol_negotiation(
    make_server: ServerFactory, client: ClientFactory, seen: asyncio.Queue[SessionContext]
) -> None:
    server = await make_server(
        lambda s: s.route("/chat", Reporter, Subprotocols(["chat-v2", "chat-v1"]))
    )
    session = await client(
        server, "/chat", headers=[("wt-available-protocols", '"chat-v1", "chat-v2"')]
    )
    assert header(session, "wt-protocol") == '"chat-v2"'
    assert (await handler_ctx(seen)).get(SUBPROTOCOL) == "chat-v2"
    session = await client(server, "/chat", headers=[("wt-available-protocols", '"chat-v1"')])
    assert header(session, "wt-protocol") == '"chat-v1"'
    await handler_ctx(seen)
    none = await refusal(client, server, "/chat", headers=[("wt-available-protocols", '"v9"')])
    assert (none.status, none.reason) == (
        406,
        "no supported subprotocol; this route speaks chat-v2, chat-v1",
    )


# --- bad input ----------------------------------------------------------------------------


# HTTP/3's header limits; WebSocket's are in tests/e2e/test_websocket.py.
@pytest.mark.quic
async def test_bad_input_gets_a_clear_status_and_spares_other_sessions(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    def routes(s: Server) -> None:
        s.route("/echo", Echo)
        s.route("/chat", Echo, SessionData(), BearerAuth(tokens))

    server = await make_server(routes)
    bystander = await client(server, "/echo")
    stream = bystander.open_stream()

    # The bad requests go out on aioquic, whatever the server's engine: qh3's QPACK
    # encoder cannot send header values past about 6.5 KB (docs/engines.md).
    bad = {"engine": "aioquic"}
    oversized = await refusal(client, server, "/chat", headers=[("x-big", "a" * 17_000)], **bad)
    assert (oversized.status, oversized.reason) == (431, "request header block too large")
    not_utf8 = await refusal(client, server, "/chat", headers=[("x-raw", "ok\udcff\udcfe")], **bad)
    if server.engine == "qh3":
        # qh3's QPACK decoder closes the connection over it before aiowt sees a request.
        assert not_utf8.status == 0
    else:
        assert (not_utf8.status, not_utf8.reason) == (400, "header is not valid UTF-8")
    with capture_logs() as logs:
        huge = await refusal(
            client, server, "/chat", headers=[("authorization", "Bearer " + "?" * 15_000)], **bad
        )
        garbled = await refusal(
            client, server, "/chat", headers=[("authorization", "\x01\x02 Bearer")]
        )
        query = await refusal(client, server, "/chat?x=%ff%fe")
    assert (huge.status, huge.reason) == (401, "malformed authorization header")
    assert (garbled.status, garbled.reason) == (401, "authorization scheme is not Bearer")
    assert (query.status, query.reason) == (
        400,
        "malformed query string: percent-escapes are not UTF-8",
    )
    assert [e["event"] for e in logs] == [
        "refused: authentication",
        "refused: authentication",
        "refused: malformed query string",
    ]

    async with bounded():
        stream.send_message({"still": "here"})
        assert await stream.receive_message() == {"still": "here"}
    assert server.live_sessions == 1
