"""Access log formatting: durations printed like Go, query redaction, bad formats refused."""

from __future__ import annotations

import pytest

from aiowt.middleware.access_format import format_duration, redact_query
from aiowt.middleware.logging import AccessLog
from aiowt.transport import UsageError


@pytest.mark.parametrize("fmt", ["%z", "%h %", "%{}i", "", "%{X}x"])
def test_bad_formats_are_usage_errors(fmt: str) -> None:
    with pytest.raises(UsageError):
        AccessLog(fmt)


def test_format_duration_prints_like_go() -> None:
    assert format_duration(0.000000123) == "123ns"
    assert format_duration(0.000034679) == "34.679µs"
    assert format_duration(0.0015) == "1.5ms"
    assert format_duration(2.0) == "2s"
    assert format_duration(75.926272) == "1m15.926272s"
    assert format_duration(3723) == "1h2m3s"


def test_redact_query_keeps_the_rest_byte_for_byte() -> None:
    assert redact_query("a=%20b&TOKEN=x&t=1&token") == "a=%20b&TOKEN=REDACTED&t=1&token"
    assert redact_query("") == ""
    assert redact_query("room=1&pin=2", ["pin"]) == "room=1&pin=REDACTED"
