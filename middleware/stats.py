"""Session statistics kept in the `MetricsCollector`: concurrency and bandwidth.

Both report by telling the collector given as `metrics`, or one they start themselves on
first use (read it with `await mw.read()` or through `mw.service`; `aclose()` stops it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pykka

from aiowt.actors._service import ServiceHandle, ask, tell_quietly
from aiowt.actors.metrics import AddGauge, Inc, MetricsCollector, TakeSnapshot
from aiowt.transport.context import Key, SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.events import SessionAccepted, SessionEvent
from aiowt.transport.session import Session, SessionTap

from .chain import CallNext

__all__ = [
    "ACCEPTED_METRIC",
    "ACTIVE_METRIC",
    "BANDWIDTH",
    "BYTES_IN_METRIC",
    "BYTES_OUT_METRIC",
    "PEAK_METRIC",
    "REJECTED_METRIC",
    "Bandwidth",
    "BandwidthCounter",
    "ConcurrencyCounts",
    "ConcurrencyStats",
    "TrafficCounts",
]

ACTIVE_METRIC: Final = "aiowt_sessions_active"
PEAK_METRIC: Final = "aiowt_sessions_peak"
ACCEPTED_METRIC: Final = "aiowt_sessions_accepted_total"
REJECTED_METRIC: Final = "aiowt_sessions_rejected_total"
BYTES_IN_METRIC: Final = "aiowt_session_bytes_received_total"
BYTES_OUT_METRIC: Final = "aiowt_session_bytes_sent_total"


def _metrics_handle(metrics: object) -> ServiceHandle[MetricsCollector]:
    if metrics is not None and not isinstance(metrics, pykka.ActorRef):
        raise UsageError("metrics must be a MetricsCollector ActorRef or None")
    return ServiceHandle(metrics, MetricsCollector.start, "metrics")


# --- concurrency ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConcurrencyCounts:
    """`ConcurrencyStats` as read from the collector."""

    active: int
    peak: int
    accepted: int
    rejected: int


class _AcceptTap(SessionTap):
    __slots__ = ("_ref", "accepted")

    def __init__(self, ref: pykka.ActorRef[MetricsCollector]) -> None:
        self._ref = ref
        self.accepted = False

    def observe(self, session: Session, event: SessionEvent) -> bool:
        if type(event) is not SessionAccepted:
            return True
        self.accepted = True
        tell_quietly(self._ref, Inc(ACCEPTED_METRIC, help="Sessions accepted."))
        tell_quietly(
            self._ref,
            AddGauge(ACTIVE_METRIC, 1, help="Sessions accepted and not ended.", peak=PEAK_METRIC),
        )
        return True


class ConcurrencyStats:
    """Count sessions: active now, peak active, accepted, and rejected.

    Active goes up when a session is accepted (not when its CONNECT arrives) and down
    when the chain unwinds after its end. The peak is kept by the collector in the same
    message as the increment, so it is exact. Rejected counts the `Rejected` verdicts
    that pass through this middleware (so place it before the limits it should see),
    labelled by status.
    """

    def __init__(self, *, metrics: pykka.ActorRef[MetricsCollector] | None = None) -> None:
        self.service = _metrics_handle(metrics)

    def __repr__(self) -> str:
        return f"ConcurrencyStats(metrics={self.service!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ref = self.service.ref()
        tap = _AcceptTap(ref)
        ctx.taps.append(tap)
        try:
            await call_next(ctx)
        except Rejected as rejection:
            tell_quietly(
                ref,
                Inc(
                    REJECTED_METRIC,
                    labels={"status": str(rejection.status)},
                    help="Sessions refused on the CONNECT response, by status.",
                ),
            )
            raise
        finally:
            if tap.accepted:
                tell_quietly(ref, AddGauge(ACTIVE_METRIC, -1))

    async def read(self) -> ConcurrencyCounts:
        """The counts now (asks the collector; starts it if needed)."""
        snapshot = await ask(self.service.ref(), TakeSnapshot())
        return ConcurrencyCounts(
            active=int(snapshot.value(ACTIVE_METRIC)),
            peak=int(snapshot.value(PEAK_METRIC)),
            accepted=int(snapshot.value(ACCEPTED_METRIC)),
            rejected=int(snapshot.total(REJECTED_METRIC)),
        )

    async def aclose(self) -> None:
        """Stop the collector if this middleware started it."""
        await self.service.stop()


# --- bandwidth ------------------------------------------------------------------------------


class BandwidthCounter(SessionTap):
    """One session's bytes, as counted by the transport (a tap that reads the session).

    `bytes_in` is every payload byte the peer sent on datagrams and streams, including
    what other taps dropped; `bytes_out` every payload byte the server sent. Both are 0
    until the session is accepted.
    """

    __slots__ = ("_session",)

    def __init__(self) -> None:
        self._session: Session | None = None

    def __repr__(self) -> str:
        return f"<BandwidthCounter in={self.bytes_in} out={self.bytes_out}>"

    def observe(self, session: Session, event: SessionEvent) -> bool:
        if type(event) is SessionAccepted:
            self._session = session
        return True

    @property
    def bytes_in(self) -> int:
        return 0 if self._session is None else self._session.bytes_in

    @property
    def bytes_out(self) -> int:
        return 0 if self._session is None else self._session.bytes_out

    @property
    def attached_session(self) -> Session | None:
        return self._session


BANDWIDTH: Key[BandwidthCounter] = Key("aiowt.bandwidth")
"""The session's `BandwidthCounter`, set by `Bandwidth`."""


@dataclass(frozen=True, slots=True)
class TrafficCounts:
    """`Bandwidth` totals as read from the collector."""

    bytes_in: int
    bytes_out: int


class Bandwidth:
    """Count each session's bytes at the transport; add them to the metrics at its end.

    Handlers read the live counts through `ctx.get(BANDWIDTH)`. At the session's end
    its totals go to `aiowt_session_bytes_received_total` and `..._sent_total`.
    """

    def __init__(self, *, metrics: pykka.ActorRef[MetricsCollector] | None = None) -> None:
        self.service = _metrics_handle(metrics)

    def __repr__(self) -> str:
        return f"Bandwidth(metrics={self.service!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ref = self.service.ref()
        counter = BandwidthCounter()
        ctx.set(BANDWIDTH, counter)
        ctx.taps.append(counter)
        try:
            await call_next(ctx)
        finally:
            if counter.attached_session is not None:
                tell_quietly(
                    ref,
                    Inc(BYTES_IN_METRIC, counter.bytes_in, help="Payload bytes received."),
                )
                tell_quietly(
                    ref, Inc(BYTES_OUT_METRIC, counter.bytes_out, help="Payload bytes sent.")
                )

    async def read(self) -> TrafficCounts:
        """Totals of the sessions that have ended (asks the collector)."""
        snapshot = await ask(self.service.ref(), TakeSnapshot())
        return TrafficCounts(
            int(snapshot.value(BYTES_IN_METRIC)), int(snapshot.value(BYTES_OUT_METRIC))
        )

    async def aclose(self) -> None:
        """Stop the collector if this middleware started it."""
        await self.service.stop()
