"""Session statistics from the `MetricsCollector`: concurrency and bandwidth.

Both are observers (see `aiowt.middleware.metrics.Observer`): they report each session
to the collector, once however many observers share it, and read the catalogue's
figures back (`await mw.read()`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiowt.actors import ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsSnapshot, TakeSnapshot
from aiowt.transport import Key, Session, SessionContext, SessionTap
from aiowt.transport.events import SessionAccepted, SessionEvent

from .chain import CallNext
from .metrics import Observer, report_session

__all__ = [
    "BANDWIDTH",
    "Bandwidth",
    "BandwidthCounter",
    "ConcurrencyCounts",
    "ConcurrencyStats",
    "TrafficCounts",
]


# --- concurrency ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConcurrencyCounts:
    """`ConcurrencyStats` as read from the collector."""

    active: int
    peak: int
    accepted: int
    rejected: int


class ConcurrencyStats(Observer):
    """Count sessions: active now, peak active, accepted, and rejected.

    Active goes up when a session is accepted (not when its CONNECT arrives) and down
    when the chain unwinds after its end. The peak is kept by the collector in the same
    message as the increment, so it is exact. Rejected counts the refusals (`Rejected`)
    from further in the chain, so place it before the limits it should see.
    """

    def __repr__(self) -> str:
        return f"ConcurrencyStats(metrics={self.service!r})"

    async def read(self) -> ConcurrencyCounts:
        """The counts now (asks the collector; starts it if needed)."""
        snapshot = await ask(self.service.ref(), TakeSnapshot())
        return ConcurrencyCounts(
            active=int(snapshot.total(names.SESSIONS_ACTIVE.name)),
            peak=int(snapshot.value(names.SESSIONS_ACTIVE_PEAK.name)),
            accepted=int(snapshot.total(names.SESSIONS_ACCEPTED.name)),
            rejected=int(snapshot.total(names.REJECTIONS.name)),
        )


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


class Bandwidth(Observer):
    """Count each session's bytes at the transport; add them to the metrics at its end.

    Handlers read the live counts through `ctx.get(BANDWIDTH)`. At the session's end its
    totals are in the catalogue's ``aiowt_datagram_bytes_total`` and
    ``aiowt_stream_bytes_total`` (by route and direction); `read()` adds them up.
    """

    def __repr__(self) -> str:
        return f"Bandwidth(metrics={self.service!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        counter = BandwidthCounter()
        ctx.set(BANDWIDTH, counter)
        ctx.taps.append(counter)
        async with report_session(ctx, self.service.ref()):
            await call_next(ctx)

    async def read(self) -> TrafficCounts:
        """Totals of the sessions that have ended (asks the collector)."""
        snapshot = await ask(self.service.ref(), TakeSnapshot())
        return TrafficCounts(_bytes(snapshot, "in"), _bytes(snapshot, "out"))


def _bytes(snapshot: MetricsSnapshot, direction: str) -> int:
    total = 0.0
    for spec in (names.DATAGRAM_BYTES, names.STREAM_BYTES):
        family = snapshot.families.get(spec.name)
        for labels, value in family.series.items() if family is not None else ():
            if ("direction", direction) in labels:
                assert isinstance(value, int | float)
                total += value
    return int(total)
