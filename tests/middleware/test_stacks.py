"""Ready-made stacks: seed 000's order, and each one working on a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from aiowt.actors import Handler
from aiowt.actors.metrics import MetricsCollector
from aiowt.middleware import stacks
from aiowt.middleware.chain import CallNext, Middleware, middleware_name
from aiowt.transport import HandshakeError, Rejected, SessionContext
from examples.echo import Echo
from tests.conftest import HTTP_VERSION, METHOD, ClientFactory, ServerFactory, bounded


async def token_auth(ctx: SessionContext, call_next: CallNext) -> None:
    if ctx.query.get("token") != ["ok"]:
        raise Rejected(401, "bad token")
    await call_next(ctx)


class Crashes(Handler):
    async def on_datagram(self, data: bytes) -> None:
        raise RuntimeError("handler bug")


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


@pytest.fixture
async def opened() -> AsyncIterator[list[list[Middleware]]]:
    """Stacks made by a test; the services their middleware started are stopped after."""
    made: list[list[Middleware]] = []
    yield made
    for stack in made:
        for mw in stack:
            aclose = getattr(mw, "aclose", None)
            if aclose is not None:
                await aclose()


def names(stack: list[Middleware]) -> list[str]:
    return [middleware_name(mw) for mw in stack]


def test_the_recommended_order() -> None:
    assert names(stacks.common()) == ["Recover", "RequestID", "Logger", "RateLimit", "MaxSessions"]
    assert names(stacks.common(auth=token_auth, metrics=_ref())) == [
        "Recover",
        "RequestID",
        "Logger",
        "Metrics",
        "RateLimit",
        "token_auth",
        "MaxSessions",
    ]
    assert names(stacks.dev(max_per_ip=None, max_sessions=None)) == [
        "Recover",
        "RequestID",
        "AccessLog",
        "LogContext",
    ]
    assert names(stacks.prod(auth=[token_auth, token_auth])) == [
        "Recover",
        "RequestID",
        "AccessLog",
        "Logger",
        "RateLimit",
        "token_auth",
        "token_auth",
        "MaxSessions",
        "Compress",
    ]
    first, second = stacks.common(), stacks.common()
    assert all(a is not b for a, b in zip(first, second, strict=True))


def _ref() -> Any:
    # Never started: building a stack only stores the ref.
    from unittest.mock import Mock

    import pykka

    return Mock(spec=pykka.ActorRef)


async def test_prod_stack_end_to_end(
    make_server: ServerFactory,
    client: ClientFactory,
    logs: list[dict[str, Any]],
    opened: list[list[Middleware]],
) -> None:
    collector = MetricsCollector.start()
    stack = stacks.prod(auth=token_auth, max_per_ip=1, metrics=collector)
    opened.append(stack)
    server = await make_server(lambda s: s.use(*stack).route("/echo", Echo).route("/c", Crashes))

    # Accepted: the request id comes back, compression is negotiated.
    session = await client(server, "/echo?token=ok&compress=gzip")
    assert session.request.header("wt-compress") == "gzip"
    request_id = session.request.header("x-request-id")
    # The rate limit refuses a second session from the same IP, with the request id.
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/echo?token=ok")
    assert caught.value.status == 429
    refused_id = dict(caught.value.headers)["x-request-id"]
    await session.aclose()
    async with bounded():
        await server.wait_idle()
    # Auth refuses a bad token; the access log hides it.
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/echo?token=nope")
    assert caught.value.status == 401
    # A crashing handler is contained by Recover, after the logger has seen it.
    crashing = await client(server, "/c?token=ok")
    crashing.send_datagram(b"x")
    async with bounded():
        await crashing.wait_closed()
        await server.wait_idle()

    rejected = [e for e in logs if e["event"] == "session rejected"]
    assert [(e["status"], e["rejected_by"]) for e in rejected][:2] == [
        (429, "RateLimit"),
        (401, "token_auth"),
    ]
    assert rejected[0]["request_id"] == refused_id
    ended = [e for e in logs if e["event"] == "session ended"]
    assert ended[0]["request_id"] == request_id
    assert ended[0]["log_level"] == "info"
    access = [e["event"] for e in logs if f'"{METHOD} /' in str(e["event"])]
    assert f'"{METHOD} /echo?token=REDACTED {HTTP_VERSION}" 401 -' in access[2]
    await collector.stop(block=False)


async def test_dev_stack_writes_coloured_lines_and_binds_ids(
    make_server: ServerFactory,
    client: ClientFactory,
    logs: list[dict[str, Any]],
    opened: list[list[Middleware]],
) -> None:
    seen: list[dict[str, Any]] = []

    async def peek(ctx: SessionContext, call_next: CallNext) -> None:
        seen.append(structlog.contextvars.get_contextvars())
        await call_next(ctx)

    stack = stacks.dev()
    opened.append(stack)
    server = await make_server(lambda s: s.use(*stack, peek).route("/echo", Echo))
    session = await client(server, "/echo", headers=[("user-agent", "pytest")])
    await session.aclose()
    async with bounded():
        await server.wait_idle()
    [line] = [e["event"] for e in logs if f'"{METHOD} /' in str(e["event"])]
    assert "\033[32;1m200\033[0m" in line
    assert line.endswith('"pytest"\033[0m')
    assert seen[0]["request_id"] == session.request.header("x-request-id")
    assert seen[0]["path"] == "/echo"


async def test_common_stack_logs_sessions(
    make_server: ServerFactory,
    client: ClientFactory,
    logs: list[dict[str, Any]],
    opened: list[list[Middleware]],
) -> None:
    stack = stacks.common(max_sessions=1)
    opened.append(stack)
    server = await make_server(lambda s: s.use(*stack).route("/echo", Echo))
    first = await client(server, "/echo")
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/echo")
    assert caught.value.status == 503
    await first.aclose()
    async with bounded():
        await server.wait_idle()
    assert [e["event"] for e in logs if e["event"].startswith("session ")] == [
        "session started",
        "session rejected",
        "session ended",
    ]
