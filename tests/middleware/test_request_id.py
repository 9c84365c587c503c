"""RequestID alone with a fake call_next; also the fake call_next and contexts that the
tests of the other request-data middleware share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
import structlog

from aiowt.middleware.chain import Middleware
from aiowt.middleware.request_id import RequestID
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.request import ConnectRequest


def make_ctx(
    headers: Sequence[tuple[str, str]] = (),
    *,
    path: str = "/chat",
    query: str = "",
    remote: tuple[str, int] = ("127.0.0.1", 50000),
) -> SessionContext:
    return SessionContext(
        request=ConnectRequest(
            method="CONNECT",
            scheme="https",
            authority="localhost:4433",
            path=path,
            query_string=query,
            protocol="webtransport",
            headers=tuple(headers),
            remote_addr=remote,
        )
    )


class Next:
    """A fake rest-of-chain: records that it ran and, optionally, runs a probe or raises."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.calls = 0
        self.raises = raises
        self.seen: dict[str, Any] = {}

    async def __call__(self, ctx: SessionContext) -> None:
        self.calls += 1
        self.seen["contextvars"] = structlog.contextvars.get_contextvars()
        if self.raises is not None:
            raise self.raises


async def run(mw: Middleware, ctx: SessionContext, nxt: Next | None = None) -> Next:
    nxt = nxt or Next()
    await mw(ctx, nxt)
    return nxt


async def rejected(mw: Middleware, ctx: SessionContext) -> Rejected:
    nxt = Next()
    with pytest.raises(Rejected) as caught:
        await mw(ctx, nxt)
    assert nxt.calls == 0, "a rejection must come before call_next"
    return caught.value


# --- RequestID ----------------------------------------------------------------------------


async def test_request_id_honours_a_clean_incoming_id() -> None:
    ctx = make_ctx([("x-request-id", "abc-123.4:5")])
    nxt = await run(RequestID(), ctx)
    assert ctx.request_id == "abc-123.4:5"
    assert ("x-request-id", "abc-123.4:5") in ctx.response_headers
    assert nxt.seen["contextvars"]["request_id"] == "abc-123.4:5"
    assert "request_id" not in structlog.contextvars.get_contextvars()


async def test_request_id_strips_log_breaking_characters_then_truncates() -> None:
    ctx = make_ctx([("x-request-id", 'ab\x01 c"d\\e\u2028f=g' + "h" * 300)])
    await run(RequestID(limit=10), ctx)
    assert ctx.request_id == "abcdef=ghh"
    assert re.fullmatch(r"[A-Za-z0-9._:+/=@-]{10}", ctx.request_id)


@pytest.mark.parametrize("incoming", [None, "", "\x01\x02 <>"])
async def test_request_id_is_minted_when_nothing_usable_arrives(incoming: str | None) -> None:
    ctx = make_ctx([] if incoming is None else [("x-request-id", incoming)])
    await run(RequestID(), ctx)
    assert ctx.request_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", ctx.request_id)


async def test_request_id_can_ignore_incoming_ids_and_use_another_header() -> None:
    ctx = make_ctx([("x-trace", "from-client")])
    await run(RequestID("X-Trace", honor_incoming=False), ctx)
    assert ctx.request_id != "from-client"
    assert ctx.response_headers == [("x-trace", ctx.request_id)]


async def test_request_id_stays_bound_while_the_rest_of_the_chain_runs() -> None:
    ctx = make_ctx([("x-request-id", "r1")])
    nxt = Next(raises=Rejected(401, "later"))
    with pytest.raises(Rejected):
        await RequestID()(ctx, nxt)
    assert nxt.seen["contextvars"] == {"request_id": "r1"}
    # Rejections further in still carry the id: the server adds ctx.response_headers.
    assert ctx.response_headers == [("x-request-id", "r1")]
    assert structlog.contextvars.get_contextvars() == {}


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_request_id_options_are_validated(bad: Any) -> None:
    with pytest.raises(UsageError):
        RequestID(limit=bad)
    with pytest.raises(UsageError):
        RequestID("bad header")
    assert repr(RequestID()) == ("RequestID(header='x-request-id', limit=128, honor_incoming=True)")
