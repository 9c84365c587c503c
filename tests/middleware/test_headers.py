"""RequireHeader and PoweredBy, one layer at a time, with a fake call_next."""

from __future__ import annotations

from typing import Any

import pytest

from aiowt.middleware.headers import PoweredBy, RequireHeader
from aiowt.transport.errors import UsageError
from tests.middleware.test_request_id import make_ctx, rejected, run

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


# --- PoweredBy ----------------------------------------------------------------------------


async def test_powered_by_adds_a_response_header() -> None:
    ctx = make_ctx()
    await run(PoweredBy("acme/2"), ctx)
    assert ctx.response_headers == [("x-powered-by", "acme/2")]
    assert repr(PoweredBy()) == "PoweredBy('aiowt')"
    for bad in ("", " padded", "a\r\nb", "nul\x00"):
        with pytest.raises(UsageError):
            PoweredBy(bad)
