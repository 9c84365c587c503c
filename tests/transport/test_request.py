"""`parse_query`: every value kept in order, malformed input refused with MalformedQuery."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiowt.transport import MalformedQuery
from aiowt.transport.request import parse_query


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
