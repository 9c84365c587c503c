"""If and ErrorHandler, one layer at a time, with a fake call_next."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from aiowt.middleware.control import ErrorHandler, If
from aiowt.middleware.headers import PoweredBy, RequireHeader
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import Rejected, UsageError
from tests.middleware.test_request_id import Next, make_ctx, rejected, run

# --- If -----------------------------------------------------------------------------------


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
