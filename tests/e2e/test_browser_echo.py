"""A real browser (headless Chromium) talks to the echo example over WebTransport."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar
from urllib.parse import quote

from aiowt.transport import CloseInfo, Stream
from examples.echo import Echo
from tests.browser import PageServer, chromium, page, require_chromium
from tests.conftest import ServerFactory


class ObservedEcho(Echo):
    closes: ClassVar[asyncio.Queue[CloseInfo | None]]

    async def on_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        await super().on_stream_data(stream, data, end_stream)

    async def on_stop(self) -> None:
        self.closes.put_nowait(self.close_info)


async def test_chromium_echoes_a_datagram_and_a_stream_message(
    make_server: ServerFactory,
) -> None:
    require_chromium()
    ObservedEcho.closes = asyncio.Queue()
    server = await make_server(lambda s: s.route("/echo", ObservedEcho))
    assert server.certificate is not None
    host, port = server.address
    wt_url = f"https://{host}:{port}/echo"
    async with PageServer({"/echo.html": ("text/html", page("echo.html"))}) as pages:
        url = (
            f"http://127.0.0.1:{pages.port}/echo.html"
            f"?url={quote(wt_url)}&hash={server.certificate.sha256_hex}"
        )
        async with chromium(url):
            result: dict[str, Any] = await asyncio.wait_for(pages.results.get(), 60)
            assert "error" not in result, result.get("error", "")
            assert result["datagram"] == "ping from chromium"
            assert result["stream"] == result["sent"]
            info = await asyncio.wait_for(ObservedEcho.closes.get(), 10)
    assert info is not None
    assert (info.code, info.reason, info.by_peer) == (4000, "browser done", True)
