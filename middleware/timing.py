"""Timer and recorder (seed 003's ``TimerMiddleware`` and ``RecorderMiddleware``).

They publish what they measure in the typed keys of `aiowt.middleware.record`, so any
middleware outside them (an access log, a stats reporter of the user's own) can read it
after ``await call_next(ctx)`` returns or raises.
"""

from __future__ import annotations

import importlib
import warnings

from aiowt.transport import SessionContext

from . import _plumbing
from .chain import CallNext
from .record import SessionRecord, session_record, start_time

__all__ = ["Recorder", "Timer"]


def _keep(ctx: SessionContext, record: SessionRecord, error: BaseException | None) -> None:
    """Computing the record is what publishes it; there is nothing more to report."""


class Timer:
    """Sets `START_TIME` on the way in and `ELAPSED` when the session ends (seed 003).

    Handlers and inner middleware can read `START_TIME` during the session; outer
    middleware read `ELAPSED` (and the rest of `RECORD`) after ``call_next``.
    """

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        start_time(ctx)
        async with _plumbing.observe(ctx, _keep):
            await call_next(ctx)

    def __repr__(self) -> str:
        return "Timer()"


class Recorder:
    """Sets `STATUS`, `BYTES_IN`, `BYTES_OUT` (and `RECORD`) when the session ends (seed 003)."""

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        async with _plumbing.observe(ctx, _keep):
            await call_next(ctx)

    def __repr__(self) -> str:
        return "Recorder()"


# --- names this module used to hold -------------------------------------------------------

_MOVED = {
    "BYTES_IN": "aiowt.middleware.record",
    "BYTES_OUT": "aiowt.middleware.record",
    "ELAPSED": "aiowt.middleware.record",
    "RECORD": "aiowt.middleware.record",
    "START_TIME": "aiowt.middleware.record",
    "STATUS": "aiowt.middleware.record",
    "SessionRecord": "aiowt.middleware.record",
    "session_record": "aiowt.middleware.record",
    "start_time": "aiowt.middleware.record",
}


async def _observe(
    ctx: SessionContext, call_next: CallNext
) -> tuple[SessionRecord, BaseException | None]:
    try:
        await call_next(ctx)
    except GeneratorExit:
        raise
    except BaseException as error:
        return session_record(ctx, error), error
    return session_record(ctx), None


def __getattr__(name: str) -> object:
    if name in _MOVED:
        new = f"{_MOVED[name]}.{name}"
        value: object = getattr(importlib.import_module(_MOVED[name]), name)
    elif name == "observe":
        new, value = "an `async with` around call_next (see docs/observability.md)", _observe
    elif name == "when_accepted":
        new = "a tap (aiowt.transport.SessionTap) seeing SessionAccepted"
        value = _plumbing.when_accepted
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"aiowt.middleware.timing.{name} is deprecated; use {new}",
        DeprecationWarning,
        stacklevel=2,
    )
    return value
