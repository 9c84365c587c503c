"""`Server.connect_in_memory`: the whole stack minus the socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiowt import Server
from aiowt.actors import Handler
from aiowt.middleware.chain import CallNext
from aiowt.transport import HandshakeError, Rejected, SessionContext, Stream
from examples.echo import Echo
from tests.conftest import bounded


async def test_in_memory_session_echoes_datagrams_streams_and_messages() -> None:
    server = Server()
    server.route("/echo", Echo)
    session = await server.connect_in_memory("/echo")
    try:
        async with bounded():
            session.send_datagram(b"mem")
            assert await session.receive_datagram() == b"mem"
            stream = session.open_stream()
            stream.send_message({"n": 1})
            assert await stream.receive_message() == {"n": 1}
    finally:
        await session.aclose()
        await server.shutdown()
    assert server.live_sessions == 0


async def test_in_memory_runs_routing_middleware_and_on_stop() -> None:
    seen: asyncio.Queue[Any] = asyncio.Queue()

    async def members_only(ctx: SessionContext, call_next: CallNext) -> None:
        if ctx.request.header("x-member") != "1":
            raise Rejected(403, "members only")
        await call_next(ctx)

    class Member(Handler):
        async def on_message(self, message: Any, stream: Stream | None) -> None:
            seen.put_nowait(("message", message, self.ctx.path_params["name"]))

        async def on_stop(self) -> None:
            assert self.close_info is not None
            seen.put_nowait(("stop", self.close_info.code, self.ctx.remote_ip))

    server = Server()
    server.route("/members/{name}", Member, members_only)
    with pytest.raises(HandshakeError) as caught:
        await server.connect_in_memory("/members/ann")
    assert caught.value.status == 403
    with pytest.raises(HandshakeError) as missing:
        await server.connect_in_memory("/nobody")
    assert missing.value.status == 404
    session = await server.connect_in_memory("/members/ann", headers=[("x-member", "1")])
    session.send_datagram_message("hello")
    async with bounded():
        assert await seen.get() == ("message", "hello", "ann")
        await session.aclose(9, "done")
        assert await seen.get() == ("stop", 9, "127.0.0.1")
    await server.shutdown()
