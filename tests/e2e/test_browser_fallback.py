"""The TypeScript client's WebSocket fallback, in headless Chromium against a real server.

The server serves both transports (WebSocket as plain `ws://`: a browser cannot pin a
certificate hash for a WebSocket, and the page is on http://127.0.0.1). The page
(`pages/fallback.html`) imports `clients/js/dist/aiowt-client.js` and:

- with `WebTransport` deleted, connects in "auto" mode and runs everything over
  WebSocket: a 200 KB message (many chunks, credit), two streams at once, datagrams, a
  server-opened stream, close codes both ways, `Reconnecting`, a refused upgrade;
- with `WebTransport` back but its UDP port swallowing every packet, falls back to
  WebSocket after `fallbackAfterMs`, and says what it tried when both fail;
- still uses WebTransport when asked (and in "auto" when it answers).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import quote

from aiowt import CloseCode, Server
from aiowt.transport.context import SessionContext
from examples.echo import Echo
from tests.browser import PageServer, chromium, require_chromium
from tests.conftest import ServerFactory
from tests.e2e.client_pages import Closer, Flaky, page_files

PAGE_TIMEOUT = 180.0


def routes(server: Server) -> None:
    server.route("/echo", Echo)
    server.route("/closer", Closer)
    server.route("/flaky", Flaky)


async def test_typescript_client_falls_back_to_websocket(make_server: ServerFactory) -> None:
    require_chromium()
    files = page_files("fallback.html")
    Flaky.sessions = 0
    ended: asyncio.Queue[tuple[str, str, int | None, str | None]] = asyncio.Queue()

    def record(ctx: SessionContext) -> None:
        info = ctx.close_info
        ended.put_nowait((ctx.path, ctx.transport, info and info.code, info and info.reason))

    def configure(server: Server) -> None:
        routes(server)
        server.on_disconnect.append(record)

    server = await make_server(configure, websocket=True, websocket_port=0, websocket_tls=False)
    assert server.certificate is not None
    host, port = server.address
    ws_host, ws_port = server.websocket_address
    base = f"https://{host}:{port}"
    ws = f"ws://{ws_host}:{ws_port}"
    # A UDP port that takes every packet and never answers: no ICMP "unreachable" for
    # Chromium, so its WebTransport attempt just waits (until fallbackAfterMs).
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent_port = silent.getsockname()[1]
    try:
        async with PageServer(files) as pages:
            url = (
                f"http://127.0.0.1:{pages.port}/fallback.html?base={quote(base)}&ws={quote(ws)}"
                f"&hash={server.certificate.sha256_hex}&silent={silent_port}"
            )
            async with chromium(url):
                result: dict[str, Any] = await asyncio.wait_for(pages.results.get(), PAGE_TIMEOUT)
    finally:
        silent.close()

    # (a) WebTransport hidden: "auto" went straight to WebSocket.
    connect = result["connect"]
    assert connect.get("hidden") is True, connect
    assert connect["transport"] == "websocket"
    assert connect["url"] == f"{ws}/echo"
    assert connect["maxDatagramSize"] == 16 * 1024

    stream = result["stream"]
    assert stream.get("count") == 3, stream
    assert stream["first"] == {"n": 1, "text": "héllo"}
    assert stream["bigEqual"] is True
    assert stream["last"] == "done"
    assert stream["oversize"] == {"name": "FrameTooLarge", "isFrameTooLarge": True}

    two = result["twoStreams"]
    assert two.get("answers") == [{"i": i} for i in range(5)], two
    assert two["chatEnded"] is True
    assert two["bulkEqual"] is True

    datagram = result["datagram"]
    assert datagram.get("sent") is True, datagram
    assert datagram["received"] == {"ping": "datagram"}
    assert (datagram["tooBigSent"], datagram["dropped"]) == (False, 1)

    assert result["incoming"] == {"kind": "unidirectional", "messages": [{"uni": 1}, "two"]}

    client_close = result["clientClose"]
    assert (client_close.get("code"), client_close.get("reason")) == (4000, "client done ✓")
    assert client_close["byPeer"] is False
    assert client_close["after"] == {"name": "SessionClosed", "isSessionClosed": True}

    server_close = result["serverClose"]
    assert server_close.get("code") == CloseCode.RATE_LIMITED, server_close
    assert server_close["name"] == server_close["nameOf"] == "RATE_LIMITED"
    assert (server_close["reason"], server_close["byPeer"]) == ("slow down", True)
    assert server_close["transport"] == "websocket"

    reconnect = result["reconnect"]
    assert reconnect.get("reply") == {"welcome": 2, "hello": 2}, reconnect
    assert reconnect["transports"] == ["websocket", "websocket"]
    assert reconnect["firstClose"] == "GOING_AWAY"

    refused = result["refused"]
    assert refused.get("isConnectError") is True, refused
    assert refused["attempts"] == ["websocket"]
    assert "WebTransport is not available here" in refused["message"]
    assert "1006" in refused["message"]

    # (b) WebTransport present but unanswered: WebSocket after fallbackAfterMs.
    fallback = result["fallback"]
    assert fallback.get("transport") == "websocket", fallback
    assert fallback["url"] == f"{ws}/echo"
    assert fallback["ms"] >= 1400  # timers may fire a little early, never much
    assert fallback["reply"]["bigEqual"] is True

    both = result["bothFail"]
    assert both.get("isConnectError") is True, both
    assert both["attempts"] == ["webtransport", "websocket"]
    assert "WebTransport: no session within 1000 ms" in both["message"]
    assert f"then WebSocket ({ws}/nowhere)" in both["message"]

    # (c) WebTransport when asked for, and in "auto" when it answers.
    webtransport = result["webtransport"]
    assert webtransport.get("transport") == "webtransport", webtransport
    assert webtransport["reply"]["bigEqual"] is True
    assert webtransport["autoTransport"] == "webtransport"

    # The server saw the page's close codes, on the transport each came over.
    wanted = {
        ("/echo", "websocket", 4000): "client done ✓",
        ("/echo", "webtransport", 4002): "webtransport done",
        ("/closer", "websocket", int(CloseCode.RATE_LIMITED)): "slow down",
    }
    seen: dict[tuple[str, str, int | None], str | None] = {}
    while not wanted.keys() <= seen.keys():
        path, transport, code, reason = await asyncio.wait_for(ended.get(), 15)
        seen[(path, transport, code)] = reason
    assert {key: seen[key] for key in wanted} == wanted
