"""The TypeScript client (`clients/js`) in headless Chromium against a real server.

The page (`pages/client.html`) imports the package's browser bundle,
`clients/js/dist/aiowt-client.js`, and runs every step against the routes below:
streams, datagrams, server-opened streams, close codes both ways, the size limit,
`Reconnecting`, and a refused session. It POSTs one JSON object of results.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar
from urllib.parse import quote

from aiowt import CloseCode, CloseInfo, Server
from examples.echo import Echo
from tests.browser import PageServer, chromium, require_chromium
from tests.conftest import ServerFactory
from tests.e2e.client_pages import Closer, Flaky, page_files

PAGE_TIMEOUT = 120.0


class ObservedEcho(Echo):
    closes: ClassVar[asyncio.Queue[CloseInfo | None]]

    async def on_stop(self) -> None:
        self.closes.put_nowait(self.close_info)


def routes(server: Server) -> None:
    server.route("/echo", ObservedEcho)
    server.route("/closer", Closer)
    server.route("/flaky", Flaky)


async def test_typescript_client_in_chromium(make_server: ServerFactory) -> None:
    require_chromium()
    files = page_files("client.html")
    ObservedEcho.closes = asyncio.Queue()
    Flaky.sessions = 0
    server = await make_server(routes)
    assert server.certificate is not None
    host, port = server.address
    base = f"https://{host}:{port}"
    async with PageServer(files) as pages:
        url = (
            f"http://127.0.0.1:{pages.port}/client.html"
            f"?base={quote(base)}&hash={server.certificate.sha256_hex}"
        )
        async with chromium(url):
            result: dict[str, Any] = await asyncio.wait_for(pages.results.get(), PAGE_TIMEOUT)
            closes = [await asyncio.wait_for(ObservedEcho.closes.get(), 30) for _ in range(2)]
    assert result["connect"]["url"] == f"{base}/echo"

    stream = result["stream"]
    assert stream["count"] == 4, stream
    assert stream["first"] == {"n": 1, "text": "héllo"}
    assert stream["second"] == [1, 2, 3]
    assert stream["bigEqual"] is True
    assert stream["last"] == "done"
    # Refused locally before anything was written: the echo holds only the good four.
    assert stream["oversize"] == {
        "name": "FrameTooLarge",
        "isFrameTooLarge": True,
        "size": 1024 * 1024 + 5 + 6,  # body + fixmap/fixstr "blob" + bin32 header
        "limit": 1024 * 1024,
    }

    datagram = result["datagram"]
    assert datagram["received"]["ping"] == "datagram", datagram
    assert datagram["tooBigSent"] is False
    assert datagram["dropped"] == 1

    assert result["incoming"] == {"kind": "unidirectional", "messages": [{"uni": 1}, "two"]}

    client_close = result["clientClose"]
    assert (client_close["code"], client_close["reason"]) == (4000, "client done ✓")
    assert client_close["byPeer"] is False
    assert client_close["after"] == {"name": "SessionClosed", "isSessionClosed": True}

    by_code = {info.code: info for info in closes if info is not None}
    assert (by_code[4000].reason, by_code[4000].by_peer) == ("client done ✓", True)
    long_reason = result["longReason"]
    assert long_reason.get("code") == 4001, long_reason
    # Chromium cuts a longer reason to 1024 bytes on the wire (the package cuts it first).
    assert by_code[4001].reason == "r" * 1024

    server_close = result["serverClose"]
    assert server_close["code"] == CloseCode.RATE_LIMITED
    assert server_close["name"] == server_close["nameOf"] == "RATE_LIMITED"
    assert (server_close["reason"], server_close["byPeer"]) == ("slow down", True)

    reconnect = result["reconnect"]
    assert reconnect["sessionsOpened"] == 2, reconnect
    assert reconnect["sameSession"] is True
    assert reconnect["reply"] == {"welcome": 2, "hello": 2}
    assert reconnect["firstClose"]["name"] == "GOING_AWAY"
    assert reconnect["firstClose"]["reason"] == "restarting"
    assert reconnect["retries"][0] == {"retry": 0, "error": "SessionClosed", "code": "GOING_AWAY"}
    assert reconnect["finalClose"]["code"] == CloseCode.NORMAL
    assert reconnect["finalClose"]["byPeer"] is False
    assert (reconnect["error"], reconnect["done"]) == (None, True)

    give_up = result["giveUp"]
    assert give_up["name"] == "SessionClosed", give_up
    assert give_up["isSessionClosed"] is True
    assert give_up["info"]["name"] == "RATE_LIMITED"
    assert give_up["info"]["reason"] == "go away"
    assert give_up["sessionsOpened"] == 1

    not_found = result["notFound"]
    assert not_found["name"] == "ConnectError", not_found
    assert not_found["isConnectError"] is True
    assert not_found["url"] == f"{base}/nowhere"
    assert "do not reveal why" in not_found["message"]

    bad_hash = result["badHash"]
    assert bad_hash["name"] == "InvalidCertificateHash", bad_hash
    assert bad_hash["isInvalid"] is True
