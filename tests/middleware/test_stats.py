"""The stats middleware without sockets: options, reprs, and what ConcurrencyStats and
Bandwidth count, against real actors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from aiowt.middleware.stats import BANDWIDTH, Bandwidth, ConcurrencyStats
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.events import DatagramReceived, DatagramSent
from aiowt.transport.session import Session
from tests.middleware.test_limits import FakeSession, accepting, make_ctx, raising

# --- options and reprs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: ConcurrencyStats(metrics="x"),
        lambda: Bandwidth(metrics=3),
    ],
)
def test_options_are_validated_at_construction(build: Callable[[], object]) -> None:
    with pytest.raises(UsageError):
        build()


def test_reprs_are_readable() -> None:
    assert repr(ConcurrencyStats()).startswith("ConcurrencyStats(metrics=ServiceHandle(")
    assert repr(Bandwidth()).startswith("Bandwidth(metrics=ServiceHandle(")


# --- stats ------------------------------------------------------------------------------------


async def test_concurrency_stats_count_active_peak_accepted_rejected() -> None:
    stats = ConcurrencyStats()
    try:

        def await_nested(depth: int) -> Callable[[SessionContext, FakeSession], Any]:
            async def during(ctx: SessionContext, session: FakeSession) -> None:
                if depth:
                    await stats(make_ctx(), accepting(await_nested(depth - 1)))

            return during

        await stats(make_ctx(), accepting(await_nested(2)))  # three at once at the deepest
        with pytest.raises(Rejected):
            await stats(make_ctx(), raising(Rejected(429, "no")))
        counts = await stats.read()
        assert (counts.active, counts.peak, counts.accepted, counts.rejected) == (0, 3, 3, 1)
    finally:
        await stats.aclose()


async def test_bandwidth_reads_the_transport_counters() -> None:
    bandwidth = Bandwidth()
    try:

        def traffic(ctx: SessionContext, session: FakeSession) -> None:
            # What the transport does for each payload: count it, then show the taps.
            session.bytes_in, session.bytes_out = 1200, 345
            for tap in ctx.taps:
                tap.observe(cast(Session, session), DatagramReceived(b"x" * 1200))
                tap.observe(cast(Session, session), DatagramSent(b"x" * 345))
            counter = ctx.get(BANDWIDTH)
            assert (counter.bytes_in, counter.bytes_out) == (1200, 345)

        await bandwidth(make_ctx(), accepting(traffic))
        with pytest.raises(Rejected):  # never accepted: nothing to count
            await bandwidth(make_ctx(), raising(Rejected(403, "no")))
        counts = await bandwidth.read()
        assert (counts.bytes_in, counts.bytes_out) == (1200, 345)
    finally:
        await bandwidth.aclose()
