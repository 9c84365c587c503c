"""Webhook: events POSTed off the session path; a slow, failing, then healthy endpoint."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aiowt import Server
from aiowt.actors import ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.middleware.chain import CallNext
from aiowt.middleware.webhook import Webhook
from aiowt.transport import HandshakeError, Rejected, SessionContext, UsageError
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded


@dataclass
class Endpoint:
    """A local HTTP endpoint whose answers the test scripts: a status, or a hang."""

    answers: list[int | None] = field(default_factory=list)
    """Per request, in order: an HTTP status, or None to hang until `release` is set.
    When the list runs out, 200."""
    received: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    requests: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_request: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            body = await reader.readexactly(int(headers["Content-Length"]))
            self.requests += 1
            self.first_request.set()
            answer = self.answers.pop(0) if self.answers else 200
            if answer is None:
                await self.release.wait()
                answer = 200
            if 200 <= answer < 300:
                event = json.loads(body)
                event["_request_line"] = lines[0]
                event["_headers"] = headers
                self.received.put_nowait(event)
            writer.write(f"HTTP/1.1 {answer} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/hooks/wt?x=1"
    yield state
    state.release.set()
    server.close()
    await server.wait_closed()


async def next_event(endpoint: Endpoint) -> dict[str, Any]:
    async with bounded():
        return await endpoint.received.get()


async def session_lifecycle(server: Server, client: ClientFactory, path: str = "/echo") -> float:
    """Open a session, close it, wait for its end on the server; return the seconds taken."""
    started = time.monotonic()
    session = await client(server, path)
    async with bounded(2):
        await session.aclose(5, "done")
        await server.wait_idle()
    return time.monotonic() - started


async def bouncer(ctx: SessionContext, call_next: CallNext) -> None:
    if ctx.path == "/nope":
        raise Rejected(403, "not you")
    await call_next(ctx)


async def test_events_are_posted_as_json(
    make_server: ServerFactory, client: ClientFactory, endpoint: Endpoint
) -> None:
    hook = Webhook(endpoint.url, headers=[("authorization", "Bearer t")])
    server = await make_server(
        lambda s: s.use(hook, bouncer).route("/echo", Echo).route("/nope", Echo)
    )
    await session_lifecycle(server, client)
    connect = await next_event(endpoint)
    disconnect = await next_event(endpoint)
    assert connect["_request_line"] == "POST /hooks/wt?x=1 HTTP/1.1"
    assert connect["_headers"]["authorization"] == "Bearer t"
    assert connect["_headers"]["Content-Type"] == "application/json"
    assert connect["event"] == "connect"
    assert disconnect["event"] == "disconnect"
    for key in ("session_id", "remote_addr", "path", "timestamp", "request_id", "route"):
        assert connect[key] == disconnect[key] or key == "timestamp"
    assert connect["path"] == "/echo"
    assert abs(connect["timestamp"] - time.time()) < 5
    assert (disconnect["status"], disconnect["close_code"]) == (200, 5)
    assert disconnect["duration"] >= 0
    with pytest.raises(HandshakeError):
        await client(server, "/nope")
    rejected = await next_event(endpoint)
    assert (rejected["event"], rejected["status"], rejected["reason"]) == (
        "rejected",
        403,
        "not you",
    )
    await hook.aclose()
    assert hook.stats.sent == 3
    assert hook.stats.failed == hook.stats.dropped == 0


async def test_slow_then_failing_then_healthy_endpoint(
    make_server: ServerFactory, client: ClientFactory, endpoint: Endpoint
) -> None:
    collector = MetricsCollector.start()
    # The first POST hangs; the next two fail with 500 and 503; then all is well.
    endpoint.answers = [None, 500, 503]
    hook = Webhook(
        endpoint.url, queue_size=2, retries=3, backoff=0.01, timeout=10, metrics=collector
    )
    server = await make_server(lambda s: s.use(hook).route("/echo", Echo))

    # Slow: the sender is stuck in its first POST, yet sessions take no longer.
    assert await session_lifecycle(server, client) < 2
    async with bounded():
        await endpoint.first_request.wait()
    for _ in range(3):
        assert await session_lifecycle(server, client) < 2
    # The sender holds connect#1, the queue holds two more, the other five overflowed.
    assert hook.stats.dropped == 5
    assert hook.stats.queued == 2

    # Failing, then healthy: the held event is answered, the next one is retried
    # through two failures, and everything queued arrives.
    endpoint.release.set()
    events = [await next_event(endpoint) for _ in range(3)]
    assert [e["event"] for e in events] == ["connect", "disconnect", "connect"]
    await hook.aclose()
    stats = hook.stats
    assert (stats.sent, stats.failed, stats.dropped, stats.retries) == (3, 0, 5, 2)
    snapshot = await ask(collector, TakeSnapshot())
    assert snapshot.value(names.WEBHOOK_EVENTS.name, {"outcome": "dropped"}) == 5
    assert snapshot.value(names.WEBHOOK_EVENTS.name, {"outcome": "sent"}) == 3
    await collector.stop(block=False)


async def test_dead_endpoint_gives_up_after_retries_and_sessions_go_on(
    make_server: ServerFactory, client: ClientFactory, endpoint: Endpoint
) -> None:
    # Nothing listens on this port once the listener is closed.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    hook = Webhook(f"http://127.0.0.1:{port}/", retries=2, backoff=0.01, events={"connect"})
    server = await make_server(lambda s: s.use(hook).route("/echo", Echo))
    assert await session_lifecycle(server, client) < 2
    await hook.aclose()
    assert hook.stats.failed == 1
    assert hook.stats.retries == 2
    assert hook.stats.sent == 0


async def test_a_plain_client_error_is_not_retried(
    make_server: ServerFactory, client: ClientFactory, endpoint: Endpoint
) -> None:
    endpoint.answers = [404]
    hook = Webhook(endpoint.url, retries=3, backoff=0.01, events={"connect"})
    server = await make_server(lambda s: s.use(hook).route("/echo", Echo))
    await session_lifecycle(server, client)
    await hook.aclose()
    assert (hook.stats.failed, hook.stats.retries, endpoint.requests) == (1, 0, 1)


async def test_https_endpoint_with_a_private_ca(
    make_server: ServerFactory,
    client: ClientFactory,
    endpoint: Endpoint,
    certificate: SelfSignedCertificate,
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(certificate.cert_pem)
    key.write_bytes(certificate.key_pem)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    listener = await asyncio.start_server(endpoint.handle, "127.0.0.1", 0, ssl=server_tls)
    port = listener.sockets[0].getsockname()[1]
    trust = ssl.create_default_context(cadata=certificate.cert_pem.decode())
    hook = Webhook(f"https://127.0.0.1:{port}/tls", events={"connect"}, tls=trust)
    server = await make_server(lambda s: s.use(hook).route("/echo", Echo))
    await session_lifecycle(server, client)
    event = await next_event(endpoint)
    assert event["_request_line"] == "POST /tls HTTP/1.1"
    await hook.aclose()
    # Without the private CA the default context refuses the certificate.
    untrusting = Webhook(f"https://127.0.0.1:{port}/tls", retries=0, events={"connect"})
    server = await make_server(lambda s: s.use(untrusting).route("/echo", Echo))
    await session_lifecycle(server, client)
    await untrusting.aclose()
    assert (untrusting.stats.failed, untrusting.stats.sent) == (1, 0)
    listener.close()
    await listener.wait_closed()


async def test_after_aclose_events_are_ignored(endpoint: Endpoint) -> None:
    hook = Webhook(endpoint.url)
    await hook.aclose()
    hook._emit(Webhook._event("connect", _ctx()))
    assert hook.stats.queued == 0


def _ctx() -> SessionContext:
    from aiowt.transport.request import ConnectRequest

    return SessionContext(
        request=ConnectRequest(
            "CONNECT", "https", "h", "/p", "", "webtransport", (), ("127.0.0.1", 1)
        )
    )


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("ftp://example.com/", {}),
        ("http:///nohost", {}),
        ("http://h:99999/", {}),
        ("http://h/", {"events": {"connect", "exploded"}}),
        ("http://h/", {"queue_size": 0}),
        ("http://h/", {"retries": -1}),
        ("http://h/", {"timeout": 0}),
        ("http://h/", {"backoff": float("nan")}),
        ("http://h/", {"headers": [("x", "a\nb")]}),
        ("http://h/", {"metrics": "collector"}),
        ("http://h/", {"tls": ssl.create_default_context()}),
    ],
)
def test_webhook_validates(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        Webhook(url, **options)


def test_webhook_repr_hides_the_query() -> None:
    assert repr(Webhook("https://hooks.example.com/wt?secret=s")) == (
        "Webhook('https://hooks.example.com/wt', events=['connect', 'disconnect', 'rejected'],"
        " queue_size=1000, retries=3, timeout=5)"
    )
