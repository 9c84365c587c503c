"""Session logs, ids in contextvars, access logs (Apache and JSON)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from aiowt import Server
from aiowt.actors import Handler
from aiowt.middleware.chain import CallNext
from aiowt.middleware.logging import (
    COMBINED_LOG_FORMAT,
    COMMON_LOG_FORMAT,
    DEV_LOG_FORMAT,
    AccessLog,
    JsonAccessLog,
    LogContext,
    Logger,
)
from aiowt.transport import CloseCode, HandshakeError, Rejected, SessionContext, UsageError
from examples.echo import Echo
from tests.conftest import HTTP_VERSION, METHOD, ClientFactory, ServerFactory, bounded

handler_log = structlog.get_logger("tests.handler")


class Chatty(Handler):
    """Logs from inside its hooks, without passing any ids."""

    async def on_start(self) -> None:
        handler_log.info("hello from the handler")

    async def on_datagram(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("handler bug")
        handler_log.info("datagram in the handler", size=len(data))
        self.send_datagram(data)


class Bouncer:
    """Refuses sessions without an ``x-pass`` header."""

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        if ctx.request.header("x-pass") is None:
            raise Rejected(403, "no pass")
        await call_next(ctx)

    def __repr__(self) -> str:
        return "Bouncer()"


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    # merge_contextvars is structlog's default first processor: keep it, as apps do.
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


def events(entries: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["event"] == name]


async def echo_once(server: Server, client: ClientFactory, path: str, **options: Any) -> None:
    """Open a session, echo one 100-byte datagram, close it with 77 "bye", wait for its end."""
    session = await client(server, path, **options)
    async with bounded():
        session.send_datagram(b"x" * 100)
        assert await session.receive_datagram() == b"x" * 100
        await session.aclose(77, "bye")
        await server.wait_idle()


ID_KEYS = ("session_id", "request_id", "remote_addr", "path")


# --- Logger and LogContext ---------------------------------------------------------------------


async def test_logger_logs_start_and_end_with_ids_status_duration_bytes_and_close_code(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(lambda s: s.use(Logger()).route("/echo/{room}", Echo))
    await echo_once(server, client, "/echo/lobby")
    [started] = events(logs, "session started")
    [ended] = events(logs, "session ended")
    for entry in (started, ended):
        assert entry["path"] == "/echo/lobby"
        assert entry["route"] == "/echo/{room}"
        assert entry["remote_addr"].startswith("127.0.0.1:")
        assert len(entry["session_id"]) == 32
    assert ended["session_id"] == started["session_id"]
    assert 0 <= started["handshake"] < 5
    assert ended["status"] == 200
    assert ended["log_level"] == "info"
    assert (ended["bytes_in"], ended["bytes_out"]) == (100, 100)
    assert (ended["close_code"], ended["close_reason"], ended["closed_by_peer"]) == (
        77,
        "bye",
        True,
    )
    assert 0 <= ended["duration"] < 5


async def test_a_log_call_inside_a_handler_hook_carries_the_session_ids(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(lambda s: s.use(Logger()).route("/chatty", Chatty))
    await echo_once(server, client, "/chatty")
    [started] = events(logs, "session started")
    for name in ("hello from the handler", "datagram in the handler"):
        [entry] = events(logs, name)
        for key in ID_KEYS:
            assert entry[key] == started[key], key


async def inner_logger(ctx: SessionContext, call_next: CallNext) -> None:
    """A middleware that logs during the handshake, passing no ids."""
    handler_log.info("inner middleware")
    await call_next(ctx)


async def test_log_context_binds_the_ids_for_later_middleware(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    async def set_request_id(ctx: SessionContext, call_next: CallNext) -> None:
        ctx.request_id = "req-42"
        await call_next(ctx)

    server = await make_server(
        lambda s: s.use(set_request_id, LogContext(), inner_logger).route("/c", Chatty)
    )
    await echo_once(server, client, "/c")
    [entry] = events(logs, "inner middleware")
    assert entry["request_id"] == "req-42"
    assert entry["path"] == "/c"
    assert set(ID_KEYS) <= entry.keys()


async def test_logger_binds_too_unless_told_not_to(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(
        lambda s: s.route("/bound", Chatty, Logger(), inner_logger).route(
            "/unbound", Chatty, Logger(bind=False), inner_logger
        )
    )
    await echo_once(server, client, "/bound")
    await echo_once(server, client, "/unbound")
    bound, unbound = events(logs, "inner middleware")
    assert bound.keys() >= set(ID_KEYS)
    assert bound["path"] == "/bound"
    # The control: the ids in a middleware's line come from the binding, not from luck.
    assert "session_id" not in unbound
    ended = events(logs, "session ended")
    assert len(ended) == 2
    assert all("session_id" in entry for entry in ended)  # the logger's own lines


async def test_rejected_handshake_is_logged_with_status_reason_and_middleware(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(lambda s: s.use(Logger(), Bouncer()).route("/echo", Echo))
    with pytest.raises(HandshakeError):
        await client(server, "/echo")
    [entry] = events(logs, "session rejected")
    assert entry["status"] == 403
    assert entry["reason"] == "no pass"
    assert entry["rejected_by"] == "Bouncer"
    assert entry["log_level"] == "info"
    assert entry["path"] == "/echo"
    assert not events(logs, "session started")


async def test_function_middleware_rejection_names_the_function(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    async def full_house(ctx: SessionContext, call_next: CallNext) -> None:
        raise Rejected(503, "full")

    server = await make_server(lambda s: s.use(Logger()).route("/echo", Echo, full_house))
    with pytest.raises(HandshakeError):
        await client(server, "/echo")
    [entry] = events(logs, "session rejected")
    assert entry["status"] == 503
    assert entry["log_level"] == "warning"
    assert entry["rejected_by"].endswith("full_house")


async def test_handler_failure_is_logged_as_a_warning_with_the_error(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(lambda s: s.use(Logger()).route("/c", Chatty))
    session = await client(server, "/c")
    session.send_datagram(b"boom")
    async with bounded():
        await session.wait_closed()
        await server.wait_idle()
    [ended] = events(logs, "session ended")
    assert ended["log_level"] == "warning"
    assert ended["error"] == "RuntimeError"
    assert ended["status"] == 200
    assert ended["close_code"] == CloseCode.INTERNAL_ERROR


def test_logger_validates_and_has_a_readable_repr() -> None:
    with pytest.raises(UsageError):
        Logger(logger=object())  # type: ignore[arg-type]
    assert repr(Logger()) == "Logger(logger=default, bind=True)"
    with pytest.warns(DeprecationWarning, match="use Logger"):
        from aiowt.middleware.logging import DefaultLogger
    assert DefaultLogger is Logger
    assert repr(LogContext()) == "LogContext()"


# --- access logs -------------------------------------------------------------------------------

CLF = re.compile(
    r'^(?P<h>\S+) - (?P<u>\S+) \[(?P<t>[^\]]+)\] "(?P<r>[^"]*)" (?P<s>\d{3}) (?P<b>\S+)$'
)


async def test_common_log_format_line(make_server: ServerFactory, client: ClientFactory) -> None:
    lines: list[str] = []
    server = await make_server(
        lambda s: s.use(AccessLog(COMMON_LOG_FORMAT, sink=lines.append)).route("/echo", Echo)
    )
    before = datetime.now(UTC).replace(microsecond=0)
    await echo_once(server, client, "/echo?room=a&token=s3cret")
    [line] = lines
    match = CLF.match(line)
    assert match is not None, line
    assert match["h"] == "127.0.0.1"
    assert match["u"] == "-"
    assert match["r"] == f"{METHOD} /echo?room=a&token=REDACTED {HTTP_VERSION}"
    assert "s3cret" not in line
    assert match["s"] == "200"
    assert match["b"] == "100"
    when = datetime.strptime(match["t"], "%d/%b/%Y:%H:%M:%S %z")
    assert before <= when <= datetime.now(UTC)


async def test_combined_format_escapes_headers_and_logs_refusals(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    lines: list[str] = []
    server = await make_server(
        lambda s: s.use(AccessLog(COMBINED_LOG_FORMAT, sink=lines.append), Bouncer()).route(
            "/echo", Echo
        )
    )
    with pytest.raises(HandshakeError):
        await client(server, "/echo", headers=[("user-agent", 'evil" 200 -')])
    [line] = lines
    assert line.endswith('"-" "evil\\" 200 -"')
    assert ' 403 - "-"' in line
    assert f'"{METHOD} /echo {HTTP_VERSION}"' in line


async def test_dev_format_is_coloured_and_has_microseconds(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(lambda s: s.use(AccessLog(DEV_LOG_FORMAT)).route("/echo", Echo))
    await echo_once(server, client, "/echo", headers=[("user-agent", "pytest")])
    [entry] = [e for e in logs if f'"{METHOD} /' in e["event"]]
    line = entry["event"]
    assert line.startswith("[")
    assert "\033[32;1m200\033[0m" in line
    assert re.search(r"\033\[36;1m\d+μs\033\[0m", line)
    assert line.endswith('"pytest"\033[0m')


async def test_extra_directives(make_server: ServerFactory, client: ClientFactory) -> None:
    lines: list[str] = []
    fmt = "%m %U %q %H %P %I %O %B %T %D %{X-Test}i %{x-echo}o %%"

    async def echo_header(ctx: SessionContext, call_next: CallNext) -> None:
        ctx.add_response_header("x-echo", "yes")
        await call_next(ctx)

    server = await make_server(
        lambda s: s.use(AccessLog(fmt, sink=lines.append), echo_header).route("/echo", Echo)
    )
    await echo_once(server, client, "/echo?a=1", headers=[("x-test", "t")])
    parts = lines[0].split(" ")
    assert parts[:9] == [METHOD, "/echo", "?a=1", HTTP_VERSION, str(os.getpid()), "100", "100",
                         "100", parts[8]]  # fmt: skip
    assert float(parts[8]) == pytest.approx(int(parts[9]) / 1e6, abs=0.001)
    assert parts[10:] == ["t", "yes", "%"]


def test_access_log_repr_names_presets() -> None:
    assert repr(AccessLog()) == "AccessLog(format=DEV_LOG_FORMAT, to=structlog)"
    assert repr(AccessLog(COMMON_LOG_FORMAT, sink=print)) == (
        "AccessLog(format=COMMON_LOG_FORMAT, to=sink)"
    )
    assert repr(JsonAccessLog()) == "JsonAccessLog(to=structlog)"
    with pytest.raises(UsageError):
        AccessLog(sink="stderr")  # type: ignore[arg-type]


async def test_json_access_log_has_seed_001_fields(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    lines: list[str] = []

    async def set_request_id(ctx: SessionContext, call_next: CallNext) -> None:
        ctx.request_id = "rid-1"
        await call_next(ctx)

    server = await make_server(
        lambda s: s.use(set_request_id, JsonAccessLog(sink=lines.append)).route("/echo", Echo)
    )
    await echo_once(server, client, "/echo?api_key=k&x=1")
    record = json.loads(lines[0])
    for key in ("duration", "duration_ms", "ip_address", "request_id", "status", "time", "url"):
        assert key in record
    assert record["request_id"] == "rid-1"
    assert record["status"] == 200
    assert record["url"] == "/echo?api_key=REDACTED&x=1"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", record["ip_address"])
    assert re.fullmatch(r"[\d.]+(ns|µs|ms|s)", record["duration"])
    assert datetime.fromisoformat(record["time"]).tzinfo is not None
    assert (record["bytes_in"], record["bytes_out"], record["close_code"]) == (100, 100, 77)


async def test_json_access_log_through_structlog_logs_refusals(
    make_server: ServerFactory, client: ClientFactory, logs: list[dict[str, Any]]
) -> None:
    server = await make_server(lambda s: s.use(JsonAccessLog(), Bouncer()).route("/echo", Echo))
    with pytest.raises(HandshakeError):
        await client(server, "/echo")
    [entry] = events(logs, "access")
    assert entry["status"] == 403
    assert entry["reason"] == "no pass"
    assert entry["rejected_by"] == "Bouncer"
    assert entry["bytes_out"] == 0
