"""What the browser client's Chromium tests share: the built bundle, the pages' harness,
and the handlers the pages talk to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from aiowt import CloseCode, Handler, Stream
from tests.browser import page

BUNDLE = Path(__file__).resolve().parents[2] / "clients" / "js" / "dist" / "aiowt-client.js"


def page_files(name: str) -> dict[str, tuple[str, bytes]]:
    """The files a client page needs, for `PageServer`: the page, its harness, the
    bundle. Skips (fails on CI) when the bundle is not built."""
    if not BUNDLE.is_file():
        message = "the TypeScript client is not built: run `npm ci && npm run build` in clients/js"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {
        f"/{name}": ("text/html", page(name)),
        "/harness.js": ("text/javascript", page("harness.js")),
        "/aiowt-client.js": ("text/javascript", BUNDLE.read_bytes()),
    }


class Closer(Handler):
    """Closes its session with the code and reason a message asks for."""

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        self.close(message["close"], message["reason"])


class Flaky(Handler):
    """Its first session is closed with GOING_AWAY; later ones answer the hello."""

    sessions: ClassVar[int] = 0

    async def on_start(self) -> None:
        Flaky.sessions += 1
        self.number = Flaky.sessions

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if self.number == 1:
            self.close(CloseCode.GOING_AWAY, "restarting")
        else:
            self.send_message({"welcome": self.number, "hello": message["hello"]}, stream)
