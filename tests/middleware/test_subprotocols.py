"""Subprotocols and the lenient parse of WT-Available-Protocols, with a fake call_next."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiowt.middleware.keys import SUBPROTOCOL
from aiowt.middleware.subprotocols import Subprotocols, parse_available_protocols
from aiowt.transport.errors import UsageError
from tests.middleware.test_request_id import make_ctx, rejected, run


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
