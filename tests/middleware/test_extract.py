"""ExtractHeader(s) and SessionData, one layer at a time, with a fake call_next."""

from __future__ import annotations

from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from aiowt.middleware.extract import ExtractHeader, ExtractHeaders, SessionData
from aiowt.middleware.keys import ORIGIN, QUERY, USER_AGENT
from aiowt.transport.context import Key
from aiowt.transport.errors import UsageError
from tests.middleware.test_request_id import make_ctx, rejected, run

TENANT: Key[str] = Key("tenant")
TRACE: Key[str] = Key("trace")


async def test_extract_header_sets_the_key_only_when_present() -> None:
    ctx = make_ctx([("x-tenant", "acme"), ("x-tenant", "other")])
    await run(ExtractHeader("X-Tenant", TENANT), ctx)
    assert ctx.get(TENANT) == "acme"
    empty = make_ctx()
    await run(ExtractHeader("x-tenant", TENANT), empty)
    assert TENANT not in empty
    assert repr(ExtractHeader("x-tenant", TENANT)) == "ExtractHeader('x-tenant', Key('tenant'))"


async def test_extract_headers_maps_several() -> None:
    ctx = make_ctx([("x-tenant", "acme"), ("traceparent", "00-ab-cd-01")])
    await run(ExtractHeaders({"x-tenant": TENANT, "traceparent": TRACE}), ctx)
    assert (ctx.get(TENANT), ctx.get(TRACE)) == ("acme", "00-ab-cd-01")
    with pytest.raises(UsageError):
        ExtractHeaders({})
    with pytest.raises(UsageError):
        ExtractHeaders({"x-tenant": cast(Any, "tenant")})


async def test_session_data_fills_the_keys() -> None:
    ctx = make_ctx(
        [("user-agent", "bot/1"), ("origin", "https://a.example")], query="room=1&room=2&x="
    )
    await run(SessionData(), ctx)
    assert ctx.get(USER_AGENT) == "bot/1"
    assert ctx.get(ORIGIN) == "https://a.example"
    assert ctx.get(QUERY) == {"room": ("1", "2"), "x": ("",)}
    with pytest.raises(TypeError):
        ctx.get(QUERY)["room"] = ("3",)  # type: ignore[index]
    bare = make_ctx()
    await run(SessionData(), bare)
    assert (bare.get(USER_AGENT), bare.get(ORIGIN), bare.get(QUERY)) == ("", None, {})


async def test_session_data_refuses_a_malformed_query_with_400_and_a_log_line() -> None:
    with capture_logs() as logs:
        error = await rejected(SessionData(), make_ctx(query="a=%zz"))
    assert (error.status, error.reason) == (400, "malformed query string: invalid percent-escape")
    assert any(entry["event"] == "refused: malformed query string" for entry in logs)
    lenient = make_ctx(query="a=%zz")
    await run(SessionData(strict_query=False), lenient)
    assert lenient.get(QUERY) == {"a": ("%zz",)}
