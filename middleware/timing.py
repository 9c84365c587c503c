"""Timer and recorder (seed 003's ``TimerMiddleware`` and ``RecorderMiddleware``).

They publish what they measure in the typed keys of `aiowt.middleware.record`, so any
middleware outside them (an access log, a stats reporter of the user's own) can read it
after ``await call_next(ctx)`` returns or raises.
"""

from __future__ import annotations

from aiowt.transport import SessionContext
from aiowt.transport.deprecation import deprecated_names, moved_to

from . import _plumbing, record
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


__getattr__ = deprecated_names(
    __name__,
    {
        **{name: moved_to(record.__name__, name) for name in record.__all__},
        "observe": ("an `async with` around call_next (docs/observability.md)", lambda: _observe),
        "when_accepted": (
            "a tap (aiowt.transport.SessionTap) seeing SessionAccepted",
            lambda: _plumbing.when_accepted,
        ),
    },
)
