"""Timer and recorder: typed keys for outer middleware, and a refusal seen from further in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aiowt.actors import Handler
from aiowt.middleware.chain import CallNext
from aiowt.middleware.record import BYTES_IN, BYTES_OUT, ELAPSED, RECORD, START_TIME, STATUS
from aiowt.middleware.timing import Recorder, Timer
from aiowt.transport import HandshakeError, SessionContext
from examples.echo import Echo
from tests.conftest import ClientFactory, ServerFactory, bounded
from tests.middleware.test_logging import Bouncer, echo_once


async def test_timer_and_recorder_publish_typed_keys_for_outer_middleware(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    seen: dict[str, Any] = {}

    async def reporter(ctx: SessionContext, call_next: CallNext) -> None:
        try:
            await call_next(ctx)
        finally:
            seen.update(
                start=ctx.get(START_TIME),
                elapsed=ctx.get(ELAPSED),
                status=ctx.get(STATUS),
                bytes=(ctx.get(BYTES_IN), ctx.get(BYTES_OUT)),
                record=ctx.get(RECORD),
            )

    class SeesStart(Handler):
        async def on_start(self) -> None:
            seen["start_in_handler"] = self.ctx.get(START_TIME)

    server = await make_server(
        lambda s: (
            s.use(reporter, Timer(), Recorder()).route("/echo", Echo).route("/start", SeesStart)
        )
    )
    await echo_once(server, client, "/echo")
    assert seen["status"] == 200
    assert seen["bytes"] == (100, 100)
    assert 0 < seen["elapsed"] < 5
    assert seen["record"].close_code == 77
    assert abs((datetime.now(UTC) - seen["start"]).total_seconds()) < 5
    session = await client(server, "/start")
    async with bounded():
        await session.aclose()
        await server.wait_idle()
    assert seen["start_in_handler"] == seen["start"]
    assert repr(Timer()) == "Timer()"
    assert repr(Recorder()) == "Recorder()"


async def test_recorder_sees_a_refusal_from_further_in(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    seen: dict[str, Any] = {}

    async def reporter(ctx: SessionContext, call_next: CallNext) -> None:
        try:
            await call_next(ctx)
        finally:
            seen["status"] = ctx.get(STATUS, None)
            seen["record"] = ctx.get(RECORD, None)

    server = await make_server(lambda s: s.use(reporter, Recorder(), Bouncer()).route("/e", Echo))
    with pytest.raises(HandshakeError):
        await client(server, "/e")
    assert seen["status"] == 403
    assert seen["record"].rejected
    assert seen["record"].duration is None
