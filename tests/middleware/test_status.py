"""Status: counts per status code, response times, uptime as JSON; the health endpoint."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiowt.actors import ask
from aiowt.actors.metrics import MetricsCollector
from aiowt.actors.redis_backend import RedisBackend
from aiowt.actors.sessions import Listed, Register
from aiowt.middleware.chain import CallNext
from aiowt.middleware.status import Status
from aiowt.transport import HandshakeError, Rejected, SessionContext, UsageError
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, Unwound, bounded
from tests.redis_server import RedisServer


async def limiter(ctx: SessionContext, call_next: CallNext) -> None:
    if ctx.query.get("over"):
        raise Rejected(429, "slow down")
    await call_next(ctx)


async def get_json(url: str) -> tuple[int, Any]:
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    async with bounded():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
        response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    return int(head.split()[1]), json.loads(body)


@pytest.fixture
async def collector() -> AsyncIterator[Any]:
    ref = MetricsCollector.start()
    yield ref
    await ref.stop(block=False)


async def test_status_page_counts_verdicts_and_times(
    make_server: ServerFactory, client: ClientFactory, collector: Any
) -> None:
    now = [100.0]
    unwound = Unwound()
    status = Status(collector, clock=lambda: now[0])
    server = await make_server(lambda s: s.use(unwound, status, limiter).route("/echo", Echo))
    endpoint = await status.serve()

    first = await client(server, "/echo")
    await first.aclose()
    await unwound.wait(1)
    for _ in range(2):
        with pytest.raises(HandshakeError):
            await client(server, "/echo?over=1")
    await unwound.wait(2)
    still_open = await client(server, "/echo")
    now[0] += 75.5

    code, page = await get_json(f"{endpoint.url}/.status")
    assert code == 200
    assert page["pid"] == os.getpid()
    assert page["uptime_sec"] == 75.5
    assert page["uptime"] == "1m15.5s"
    assert page["status_code_count"] == {"200": 1, "429": 2}
    assert page["total_count"] == 3
    assert page["active_sessions"] == 1
    assert page["cluster_sessions"] == 0  # none listed: no MaxSessions in this chain
    assert 0 < page["total_response_time_sec"] < 5
    assert page["average_response_time_sec"] == pytest.approx(
        page["total_response_time_sec"] / 3, abs=1e-8
    )
    assert page["time_unix"] > 1_700_000_000
    assert isinstance(page["average_response_time"], str)
    await still_open.aclose()
    await unwound.wait(1)
    assert (await status.read())["status_code_count"] == {"200": 2, "429": 2}
    await status.aclose()


async def test_health_endpoint_reports_failures(collector: Any) -> None:
    healthy = [True]

    async def database() -> bool:
        return healthy[0]

    def raises() -> bool:
        raise RuntimeError("cannot tell")

    status = Status(collector, checks={"database": database})
    endpoint = await status.serve()
    code, page = await get_json(f"{endpoint.url}/healthz")
    assert (code, page) == (200, {"status": "ok", "checks": {"metrics": "ok", "database": "ok"}})
    healthy[0] = False
    code, page = await get_json(f"{endpoint.url}/healthz")
    assert code == 503
    assert page["checks"]["database"] == "failing"
    await status.aclose()

    status = Status(collector, checks={"odd": raises})
    ok, document = await status.health()
    assert not ok
    assert document["checks"]["odd"] == "failing"


async def test_a_dead_collector_makes_status_and_health_503(collector: Any) -> None:
    status = Status(collector, timeout=0.5)
    endpoint = await status.serve()
    await collector.stop(block=False)
    code, page = await get_json(f"{endpoint.url}/healthz")
    assert (code, page["checks"]["metrics"]) == (503, "failing")
    code, _ = await get_json(f"{endpoint.url}/.status")
    assert code == 503
    await status.aclose()


async def test_status_starts_its_own_collector() -> None:
    status = Status()
    page = await status.read()
    assert page["total_count"] == 0
    assert page["status_code_count"] == {}
    await status.aclose()
    assert status.service.started is None


@pytest.mark.parametrize(
    "options",
    [
        {"metrics": "m"},
        {"path": "status"},
        {"path": "/x", "health_path": "/x"},
        {"checks": {"a": 1}},
        {"timeout": 0},
        {"clock": 5},
    ],
)
def test_status_validates(options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        Status(**options)


def test_status_repr() -> None:
    assert repr(Status()) == "Status(path='/.status', health_path='/healthz')"


async def test_status_counts_the_clusters_sessions_on_a_shared_backend(
    redis_server: RedisServer,
) -> None:
    backend = RedisBackend.from_url(redis_server.url())
    here, there = backend.start(), backend.start()
    status = Status()
    status.use_services(here, "use[0]")
    try:
        for services, ids in ((here, ["a"]), (there, ["b", "c"])):
            for session_id in ids:
                assert await ask(services.sessions, Register(session_id))
            assert await ask(services.sessions, Listed())
        document = await status.read()
        assert (document["active_sessions"], document["cluster_sessions"]) == (0, 3)
    finally:
        await here.stop()
        await there.stop()
