"""Handshake verdicts, close codes both ways, abrupt disconnects, handler failures, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from aiowt import Server
from aiowt.actors import Handler
from aiowt.middleware.chain import CallNext
from aiowt.transport import (
    CloseCode,
    CloseInfo,
    HandshakeError,
    Rejected,
    SessionClosedError,
    SessionContext,
    Stream,
)
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded


class Recorder(Handler):
    """Records what happened to it; the test reads `events`."""

    events: ClassVar[asyncio.Queue[tuple[str, Any]]]

    async def on_start(self) -> None:
        self.events.put_nowait(("start", dict(self.ctx.path_params)))

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        self.events.put_nowait(("message", message))
        if message == "close-me":
            self.close(4321, "asked to")
        if message == "raise":
            raise RuntimeError("handler bug")

    async def on_stop(self) -> None:
        self.events.put_nowait(("stop", self.close_info))


@pytest.fixture
def events() -> asyncio.Queue[tuple[str, Any]]:
    Recorder.events = asyncio.Queue()
    return Recorder.events


async def next_event(events: asyncio.Queue[tuple[str, Any]], kind: str) -> Any:
    async with bounded():
        while True:
            name, value = await events.get()
            if name == kind:
                return value


def routes(server: Server) -> None:
    server.route("/echo", Echo)
    server.route("/rec/{room}", Recorder)
    server.route("/files/{path...}", Recorder)


async def test_unknown_path_is_404(make_server: ServerFactory, client: ClientFactory) -> None:
    server = await make_server(routes)
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/nowhere")
    assert caught.value.status == 404
    assert "no route" in caught.value.reason


async def test_path_parameters_reach_the_handler(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    await client(server, "/rec/lobby")
    assert await next_event(events, "start") == {"room": "lobby"}
    await client(server, "/files/a/b/c.txt")
    assert await next_event(events, "start") == {"path": "a/b/c.txt"}


async def test_rejecting_middleware_status_and_reason_reach_the_client(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    async def only_vip(ctx: SessionContext, call_next: CallNext) -> None:
        if ctx.request.header("x-vip") != "yes":
            raise Rejected(429, "slow down", headers=[("retry-after", "3")])
        await call_next(ctx)

    server = await make_server(lambda s: s.route("/rec/{room}", Recorder, only_vip))
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/rec/a")
    assert caught.value.status == 429
    assert caught.value.reason == "slow down"
    assert ("retry-after", "3") in caught.value.headers
    assert events.empty()  # the handler never started
    session = await client(server, "/rec/a", headers=[("x-vip", "yes")])
    assert await next_event(events, "start") == {"room": "a"}
    assert not session.closed


async def test_server_close_code_and_reason_reach_the_client(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    session = await client(server, "/rec/x")
    stream = session.open_stream()
    stream.send_message("close-me")
    async with bounded():
        info = await session.wait_closed()
    assert info == CloseInfo(4321, "asked to", by_peer=True)
    stop = await next_event(events, "stop")
    assert (stop.code, stop.reason, stop.by_peer) == (4321, "asked to", False)


class CutShort(Handler):
    """Writes part of a reply on the client's stream, then closes the session."""

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if stream is not None:
            stream.write(b"part of it")
            self.close(4322, "cut short")


async def test_a_stream_cut_off_by_the_session_end_never_reads_as_whole(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(lambda s: s.route("/cut", CutShort))
    session = await client(server, "/cut")
    stream = session.open_stream()
    stream.send_message("go")
    async with bounded():
        with pytest.raises(SessionClosedError) as ended:
            await stream.read_all()  # what arrived, then no FIN: not a clean end
        assert (ended.value.code, ended.value.reason) == (4322, "cut short")
        with pytest.raises(SessionClosedError):
            await stream.read()


async def test_client_close_code_and_reason_reach_the_handler(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    session = await client(server, "/rec/x")
    await next_event(events, "start")
    await session.aclose(77, "client is done")
    stop = await next_event(events, "stop")
    assert stop == CloseInfo(77, "client is done", by_peer=True)
    with pytest.raises(SessionClosedError):
        session.send_datagram(b"late")


async def test_abrupt_disconnect_stops_the_actor_and_runs_on_stop(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    session = await client(server, "/rec/x")
    await next_event(events, "start")
    await session.abort()
    stop = await next_event(events, "stop")
    assert stop.code == CloseCode.ABORTED
    async with bounded():
        await server.wait_idle()


async def test_handler_exception_closes_only_that_session(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    bystander = await client(server, "/echo")
    victim = await client(server, "/rec/x")
    victim.open_stream().send_message("raise")
    async with bounded():
        info = await victim.wait_closed()
    assert info.code == CloseCode.INTERNAL_ERROR
    stop = await next_event(events, "stop")
    assert stop.code == CloseCode.INTERNAL_ERROR
    bystander.send_datagram(b"still here")
    async with bounded():
        assert await bystander.receive_datagram() == b"still here"


async def test_malformed_frame_closes_with_a_clear_code(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    session = await client(server, "/rec/x")
    stream = session.open_stream()
    stream.write(b"\x00\x00\x00\x02\xc1\xc1")  # 0xc1 is never valid msgpack
    async with bounded():
        info = await session.wait_closed()
    assert info.code == CloseCode.MALFORMED_MESSAGE


async def test_oversized_frame_closes_with_a_clear_code(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes, max_message_size=1024)
    session = await client(server, "/rec/x")
    stream = session.open_stream()
    stream.write((10**6).to_bytes(4, "big") + b"\x00")
    async with bounded():
        info = await session.wait_closed()
    assert info.code == CloseCode.MESSAGE_TOO_LARGE


async def test_malformed_datagram_closes_with_a_clear_code(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    session = await client(server, "/rec/x")
    session.send_datagram(b"\xc1")
    async with bounded():
        info = await session.wait_closed()
    assert info.code == CloseCode.MALFORMED_MESSAGE


async def test_server_opened_bidirectional_stream_carries_replies(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    replies: asyncio.Queue[Any] = asyncio.Queue()

    class Asker(Handler):
        async def on_start(self) -> None:
            self.question = self.open_stream()
            self.question.send_message({"q": "name?"})

        async def on_message(self, message: Any, stream: Stream | None) -> None:
            replies.put_nowait((message, stream is self.question))

    server = await make_server(lambda s: s.route("/ask", Asker))
    session = await client(server, "/ask")
    async with bounded():
        stream = await session.accept_stream()
        assert not stream.unidirectional
        assert await stream.receive_message() == {"q": "name?"}
        # aioquic would feed these reply bytes to its HTTP/3 frame parser (and kill the
        # connection or lose them) if the transport did not intercept them.
        stream.send_message({"a": "aiowt"})
        assert await replies.get() == ({"a": "aiowt"}, True)


async def test_shutdown_closes_sessions_with_going_away_and_waits_for_on_stop(
    make_server: ServerFactory, client: ClientFactory, events: asyncio.Queue[tuple[str, Any]]
) -> None:
    server = await make_server(routes)
    sessions = [await client(server, f"/rec/{n}") for n in range(3)]
    for _ in sessions:
        await next_event(events, "start")
    async with bounded():
        await server.shutdown(timeout=5)
    for session in sessions:
        async with bounded():
            info = await session.wait_closed()
        assert info.code == CloseCode.GOING_AWAY
    stops = [await next_event(events, "stop") for _ in sessions]
    assert all(stop.code == CloseCode.GOING_AWAY for stop in stops)
    assert server.live_sessions == 0


async def test_log_lines_inside_a_handler_carry_the_session_ids(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    import structlog
    from structlog.testing import capture_logs

    logged: asyncio.Queue[None] = asyncio.Queue()

    class Chatty(Handler):
        async def on_datagram(self, data: bytes) -> None:
            structlog.get_logger("user").info("got datagram", size=len(data))
            logged.put_nowait(None)

    server = await make_server(lambda s: s.route("/chatty", Chatty))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        session = await client(server, "/chatty")
        session.send_datagram(b"hi")
        async with bounded():
            await logged.get()
    (line,) = [entry for entry in logs if entry["event"] == "got datagram"]
    assert line["path"] == "/chatty"
    assert line["session_id"]
    assert line["remote_addr"].startswith("127.0.0.1:")


async def test_startup_and_shutdown_hooks_and_middleware_aclose_run(
    make_server: ServerFactory,
) -> None:
    calls: list[str] = []

    class Owning:
        """A middleware that owns a resource and releases it with aclose()."""

        async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
            await call_next(ctx)

        async def aclose(self) -> None:
            calls.append("aclose")

    owning = Owning()

    def configure(server: Server) -> None:
        server.use(owning)
        server.route("/echo", Echo, owning)  # used twice, closed once
        server.on_startup.append(lambda: calls.append("startup"))
        server.on_shutdown.append(lambda: calls.append("shutdown"))

    server = await make_server(configure)
    assert calls == ["startup"]
    await server.shutdown()
    assert calls == ["startup", "aclose", "shutdown"]
