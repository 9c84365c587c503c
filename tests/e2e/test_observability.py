"""An operator's view of one server: logs, Prometheus, status, traces and webhooks agree.

One server with the production stack, tracing, status and a webhook, serving known
traffic from real QUIC clients; then everything an operator reads is checked against
that traffic and against each other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from aiowt.actors import Handler
from aiowt.actors.metrics import MetricsCollector
from aiowt.middleware import stacks
from aiowt.middleware._http import HttpEndpoint
from aiowt.middleware.chain import CallNext, Middleware
from aiowt.middleware.metrics import PrometheusMetrics
from aiowt.middleware.status import Status
from aiowt.middleware.tracing import AdaptiveSampler, Tracing, parse_traceparent
from aiowt.middleware.webhook import Webhook
from aiowt.transport import HandshakeError, Rejected, SessionContext
from tests.conftest import TRANSPORT, ClientFactory, ServerFactory, Unwound, bounded

log = structlog.get_logger("tests.rooms")


class Room(Handler):
    async def on_start(self) -> None:
        log.info("joined", room=self.ctx.path_params["room"])

    async def on_datagram(self, data: bytes) -> None:
        log.info("datagram", size=len(data))
        self.send_datagram(data)


class Crashes(Handler):
    async def on_datagram(self, data: bytes) -> None:
        raise RuntimeError("handler bug")


async def token_auth(ctx: SessionContext, call_next: CallNext) -> None:
    if ctx.query.get("token") != ["ok"]:
        raise Rejected(401, "bad token")
    await call_next(ctx)


class Hooks:
    """A local webhook receiver (always healthy here; its failures are tested elsewhere)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        self.events.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    receiver = Hooks()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/events"
    yield receiver
    server.close()
    await server.wait_closed()


async def http_get(url: str) -> tuple[int, bytes]:
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.rpartition(":")
    async with bounded():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
        response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def prometheus_value(text: str, name: str, **labels: str) -> float:
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    assert len(values) == 1, (name, labels, values)
    return values[0]


async def test_operator_view_of_known_traffic(
    make_server: ServerFactory, client: ClientFactory, hooks: Hooks
) -> None:
    collector = MetricsCollector.start()
    unwound = Unwound()
    status = Status(collector)
    webhook = Webhook(hooks.url, backoff=0.01)
    stack: list[Middleware] = [
        unwound,
        Tracing(AdaptiveSampler(max_rate=1000, sample_size=10)),
        status,
        webhook,
        *stacks.prod(auth=token_auth, metrics=collector),
    ]
    prom = PrometheusMetrics(collector)  # exposition only: prod's Metrics records
    endpoint = await HttpEndpoint({**prom.routes, **status.routes}).start()
    server = await make_server(
        lambda s: s.use(*stack).route("/rooms/{room}", Room).route("/crash", Crashes)
    )

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        traceparents = []
        for room in ("a", "b", "c"):
            session = await client(server, f"/rooms/{room}?token=ok")
            traceparents.append(session.request.header("traceparent"))
            async with bounded():
                for _ in range(2):
                    session.send_datagram(b"m" * 50)
                    assert await session.receive_datagram() == b"m" * 50
            await session.aclose()
        with pytest.raises(HandshakeError):
            await client(server, "/rooms/a?token=wrong")
        crashing = await client(server, "/crash?token=ok")
        crashing.send_datagram(b"x")
        await unwound.wait(5)

    # Prometheus: the route pattern, the verdicts, the refuser, the traffic, the crash.
    code, body = await http_get(f"{endpoint.url}/metrics")
    assert code == 200
    page = body.decode()
    rooms = {"route": "/rooms/{room}"}
    carried = {**rooms, "transport": TRANSPORT}
    assert prometheus_value(page, "aiowt_handshakes_total", **carried, status="200") == 3
    assert prometheus_value(page, "aiowt_handshakes_total", **carried, status="401") == 1
    assert prometheus_value(page, "aiowt_handshake_rejections_total", middleware="token_auth") == 1
    assert prometheus_value(page, "aiowt_datagrams_total", **rooms, direction="in") == 6
    assert prometheus_value(page, "aiowt_datagram_bytes_total", **rooms, direction="out") == 300
    # Recover and the observers report the crash to one collector: counted once.
    crashes = {"route": "/crash", "stage": "session"}
    assert prometheus_value(page, "aiowt_session_errors_total", **crashes) == 1
    assert prometheus_value(page, "aiowt_sessions_active", **rooms) == 0

    # Status agrees with Prometheus.
    code, body = await http_get(f"{endpoint.url}/.status")
    assert code == 200
    document = json.loads(body)
    assert document["status_code_count"] == {"200": 4, "401": 1}
    assert document["total_count"] == 5
    assert (await http_get(f"{endpoint.url}/healthz"))[0] == 200

    # Logs: every line from inside a session carries its ids and its trace.
    started = {e["session_id"]: e for e in logs if e["event"] == "session started"}
    inside = [e for e in logs if e["event"] in ("joined", "datagram")]
    assert len(inside) == 9
    for entry in inside:
        origin = started[entry["session_id"]]
        assert entry["request_id"] == origin["request_id"]
        assert entry["trace_id"] == origin["trace_id"]
        assert entry["path"] == origin["path"]
    traced = {parse_traceparent(tp)[0] for tp in traceparents if tp}  # type: ignore[index]
    assert traced == {e["trace_id"] for e in logs if e["event"] == "joined"}
    failed = [e for e in logs if e["event"] == "session ended" and e.get("error")]
    assert [e["path"] for e in failed] == ["/crash"]

    # Webhooks: one connect and one disconnect per accepted session, one refusal.
    await webhook.aclose()
    kinds = sorted(event["event"] for event in hooks.events)
    assert kinds == ["connect"] * 4 + ["disconnect"] * 4 + ["rejected"]
    assert webhook.stats.sent == 9

    await endpoint.aclose()
    for mw in stack:
        aclose = getattr(mw, "aclose", None)
        if aclose is not None and mw is not webhook:
            await aclose()
    await collector.stop(block=False)
