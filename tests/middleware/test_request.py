"""Unit tests of the request-data middleware, one layer at a time, with a fake call_next."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any, cast

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from aiowt.middleware.chain import Middleware
from aiowt.middleware.control import ErrorHandler, If
from aiowt.middleware.extract import ExtractHeader, ExtractHeaders, SessionData
from aiowt.middleware.headers import PoweredBy, RequireHeader
from aiowt.middleware.keys import ORIGIN, QUERY, SUBPROTOCOL, USER_AGENT
from aiowt.middleware.request_id import RequestID
from aiowt.middleware.subprotocols import Subprotocols, parse_available_protocols
from aiowt.transport import MalformedQuery
from aiowt.transport.context import Key, SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.request import ConnectRequest, parse_query


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


# --- parse_query --------------------------------------------------------------------------


def test_parse_query_keeps_every_value_in_order() -> None:
    assert parse_query("a=1&b=&a=2&c&d=%C3%A9+x") == {
        "a": ("1", "2"),
        "b": ("",),
        "c": ("",),
        "d": ("é x",),
    }


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("token=%zz", "invalid percent-escape"),
        ("token=abc%", "invalid percent-escape"),
        ("token=%ff%fe", "not UTF-8"),
        ("&".join(["a=1"] * 300), "more than 256 fields"),
    ],
)
def test_parse_query_refuses_malformed_input(query: str, problem: str) -> None:
    with pytest.raises(MalformedQuery, match=problem):
        parse_query(query)


@given(st.text(max_size=200))
def test_parse_query_either_parses_or_raises_malformed_query(text: str) -> None:
    with contextlib.suppress(MalformedQuery):
        parse_query(text)


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


# --- ExtractHeader(s), SessionData --------------------------------------------------------

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


# --- RequireHeader ------------------------------------------------------------------------


async def test_require_header_missing_and_empty_values_get_the_status() -> None:
    mw = RequireHeader("x-api-version")
    assert (await rejected(mw, make_ctx())).status == 400
    assert (await rejected(mw, make_ctx([("x-api-version", "")]))).reason == (
        "missing required header x-api-version"
    )
    assert (await run(mw, make_ctx([("x-api-version", "anything")]))).calls == 1


async def test_require_header_pattern_is_searched_and_status_is_configurable() -> None:
    mw = RequireHeader("x-api-version", r"^v[12]$", status=412)
    assert (await run(mw, make_ctx([("x-api-version", "v2")]))).calls == 1
    error = await rejected(mw, make_ctx([("x-api-version", "v3")]))
    assert (error.status, error.reason) == (412, "header x-api-version has an unacceptable value")
    unanchored = RequireHeader("x-client", "mobile")
    assert (await run(unanchored, make_ctx([("x-client", "acme-mobile-7")]))).calls == 1


async def test_require_header_only_checks_paths_matching_path_pattern() -> None:
    mw = RequireHeader("x-admin-token", path_pattern=r"^/admin(/|$)")
    assert (await run(mw, make_ctx(path="/chat"))).calls == 1
    assert (await rejected(mw, make_ctx(path="/admin/users"))).status == 400


@pytest.mark.parametrize(
    "kwargs",
    [{"pattern": "("}, {"status": 302}, {"status": 600}, {"path_pattern": "[z-a]"}],
)
def test_require_header_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        RequireHeader("x-a", **kwargs)


def test_require_header_repr() -> None:
    assert repr(RequireHeader("X-A", "^v1$", 401, "^/api")) == (
        "RequireHeader('x-a', pattern='^v1$', status=401, path_pattern='^/api')"
    )


# --- PoweredBy, If ------------------------------------------------------------------------


async def test_powered_by_adds_a_response_header() -> None:
    ctx = make_ctx()
    await run(PoweredBy("acme/2"), ctx)
    assert ctx.response_headers == [("x-powered-by", "acme/2")]
    assert repr(PoweredBy()) == "PoweredBy('aiowt')"
    for bad in ("", " padded", "a\r\nb", "nul\x00"):
        with pytest.raises(UsageError):
            PoweredBy(bad)


def is_admin(ctx: SessionContext) -> bool:
    return ctx.path.startswith("/admin")


async def is_admin_async(ctx: SessionContext) -> bool:
    await asyncio.sleep(0)
    return ctx.path.startswith("/admin")


@pytest.mark.parametrize("condition", [is_admin, is_admin_async])
async def test_if_runs_the_branch_the_condition_picks(condition: Any) -> None:
    mw = If(condition, RequireHeader("x-admin"), PoweredBy("public"))
    assert (await rejected(mw, make_ctx(path="/admin"))).reason == "missing required header x-admin"
    ctx = make_ctx(path="/chat")
    assert (await run(mw, ctx)).calls == 1
    assert ctx.response_headers == [("x-powered-by", "public")]


async def test_if_without_a_false_branch_passes_through() -> None:
    mw = If(is_admin, RequireHeader("x-admin"))
    assert (await run(mw, make_ctx(path="/chat"))).calls == 1
    assert repr(mw) == (
        "If(is_admin, if_true=RequireHeader('x-admin', pattern=None, status=400,"
        " path_pattern=None), if_false=None)"
    )


def test_if_options_are_validated() -> None:
    with pytest.raises(UsageError):
        If(is_admin, None, None)
    with pytest.raises(UsageError):
        If(is_admin, cast(Any, PoweredBy))  # the class, not an instance
    with pytest.raises(UsageError):
        If(cast(Any, "yes"), PoweredBy())


# --- ErrorHandler -------------------------------------------------------------------------


class QuotaExceeded(PermissionError):
    pass


async def test_error_handler_maps_by_the_most_specific_class() -> None:
    mw = ErrorHandler({PermissionError: 403, QuotaExceeded: 429, LookupError: 404})
    ctx = make_ctx()
    for exc, status, reason in [
        (PermissionError("no"), 403, "forbidden"),
        (QuotaExceeded("slow"), 429, "too many requests"),
        (KeyError("room"), 404, "not found"),
    ]:
        with capture_logs() as logs, pytest.raises(Rejected) as caught:
            await mw(ctx, Next(raises=exc))
        assert (caught.value.status, caught.value.reason) == (status, reason)
        assert caught.value.__cause__ is exc
        assert logs[0]["event"] == "refused: exception mapped to a status"


async def test_error_handler_hides_unknown_errors_unless_verbose() -> None:
    secret = ValueError("db password is hunter2\nsecond line")
    with capture_logs() as logs, pytest.raises(Rejected) as caught:
        await ErrorHandler()(make_ctx(), Next(raises=secret))
    assert (caught.value.status, caught.value.reason) == (500, "internal server error")
    assert logs[0]["log_level"] == "error"
    with pytest.raises(Rejected) as verbose:
        await ErrorHandler(verbose=True)(make_ctx(), Next(raises=secret))
    assert verbose.value.reason == "ValueError: db password is hunter2 second line"
    # Reasons travel in a header: no control characters, no trailing whitespace.
    with pytest.raises(Rejected) as odd:
        await ErrorHandler(verbose=True)(make_ctx(), Next(raises=ValueError("boom\x01\x1b")))
    assert odd.value.reason == "ValueError: boom"


async def test_error_handler_leaves_rejections_and_accepted_sessions_alone() -> None:
    mw = ErrorHandler({ValueError: 400})
    original = Rejected(429, "slow down")
    with pytest.raises(Rejected) as caught:
        await mw(make_ctx(), Next(raises=original))
    assert caught.value is original
    accepted = make_ctx()
    accepted.session = cast(Any, object())
    with pytest.raises(ValueError, match="after accept"):
        await mw(accepted, Next(raises=ValueError("after accept")))
    with pytest.raises(asyncio.CancelledError):
        await mw(make_ctx(), Next(raises=asyncio.CancelledError()))


@pytest.mark.parametrize(
    "mapping",
    [{ValueError: 200}, {ValueError: True}, {Rejected: 400}, {KeyboardInterrupt: 500}, {"x": 1}],
)
def test_error_handler_options_are_validated(mapping: Any) -> None:
    with pytest.raises(UsageError):
        ErrorHandler(mapping)


def test_error_handler_repr() -> None:
    assert repr(ErrorHandler({ValueError: 400})) == "ErrorHandler({ValueError: 400}, verbose=False)"


# --- Subprotocols -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "offered"),
    [
        (['"chat-v2", "chat-v1"'], ["chat-v2", "chat-v1"]),
        (['"a"', '"b";q=1, c'], ["a", "b", "c"]),
        (['"with, comma", "esc\\"aped"'], ["with, comma", 'esc"aped']),
        (['"a", "a", , "unterminated'], ["a"]),
        (["", "   "], []),
        (['bad token, "ok"'], ["ok"]),
    ],
)
def test_available_protocols_are_parsed_leniently(values: list[str], offered: list[str]) -> None:
    assert parse_available_protocols(values) == offered


@given(st.lists(st.text(max_size=40), max_size=4))
def test_available_protocols_parse_never_raises(values: list[str]) -> None:
    assert isinstance(parse_available_protocols(values), list)


async def test_subprotocols_picks_by_server_preference() -> None:
    mw = Subprotocols(["chat-v2", "chat-v1"])
    ctx = make_ctx([("wt-available-protocols", '"chat-v1", "chat-v2"')])
    await run(mw, ctx)
    assert ctx.get(SUBPROTOCOL) == "chat-v2"
    assert ctx.response_headers == [("wt-protocol", '"chat-v2"')]


async def test_subprotocols_without_a_match_is_406_unless_optional() -> None:
    mw = Subprotocols(["chat-v2"])
    for headers in ([("wt-available-protocols", '"chat-v9"')], []):
        error = await rejected(mw, make_ctx(headers))
        assert (error.status, error.reason) == (
            406,
            "no supported subprotocol; this route speaks chat-v2",
        )
    ctx = make_ctx([("wt-available-protocols", '"chat-v9"')])
    assert (await run(Subprotocols(["chat-v2"], required=False), ctx)).calls == 1
    assert SUBPROTOCOL not in ctx
    assert ctx.response_headers == []


@pytest.mark.parametrize("supported", [[], "chat", ["a", "a"], ["é"], [""], ["a\nb"], ["chat "]])
def test_subprotocols_options_are_validated(supported: Any) -> None:
    with pytest.raises(UsageError):
        Subprotocols(supported)


async def test_subprotocol_names_are_serialised_as_sf_strings() -> None:
    mw = Subprotocols(['say "hi"\\'])
    ctx = make_ctx([("wt-available-protocols", '"say \\"hi\\"\\\\"')])
    await run(mw, ctx)
    assert ctx.response_headers == [("wt-protocol", '"say \\"hi\\"\\\\"')]
