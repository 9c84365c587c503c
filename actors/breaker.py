"""`Breaker`: a circuit breaker actor, closed, open, half-open, driven by session outcomes.

(The `CircuitBreaker` middleware in `aiowt.middleware` is its gate on the handshake.)

The rules, all evaluated when a message is handled, against the injected `clock`:

- **closed**: every session is admitted. A failure is remembered for `window` seconds
  (failures decay: older ones are forgotten). When `threshold` failures fall inside
  the window, the circuit opens. Successes change nothing.
- **open**: sessions are refused (with the seconds left of the cooldown). Outcomes of
  sessions admitted before it opened are ignored. Once `cooldown` seconds have passed,
  the next message finds the circuit half-open.
- **half-open**: up to `half_open_max` sessions at a time are admitted as probes (each
  gets a probe id). A probe that fails opens the circuit again (a new cooldown); a
  probe that succeeds closes it, forgetting past failures. A probe still running
  `probe_timeout` seconds after its admission counts as a success: sessions can be
  long-lived, and a session that has run that long is evidence of health (without this
  rule one long session would hold the circuit half-open for its whole life). A probe
  that never ran (refused later in the chain) frees its slot (`SessionNotRun`). Only
  probes decide in half-open; outcomes of other sessions are ignored.

Outcomes name their probe id; an id from an earlier half-open period is stale and the
outcome counts as an ordinary session's.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pykka
import structlog

from aiowt.transport.deprecation import deprecated_names
from aiowt.transport.errors import UsageError

from ._service import Request, Service, handles, tell_quietly
from .metric_names import BREAKER_FAILURES, BREAKER_STATE, BREAKER_TRANSITIONS
from .metrics import Inc, MetricsCollector, SetGauge

__all__ = [
    "Admission",
    "Admit",
    "Breaker",
    "BreakerState",
    "BreakerStatus",
    "GetBreakerStatus",
    "ResetBreaker",
    "SessionFailed",
    "SessionNotRun",
    "SessionSucceeded",
    "validate_breaker_settings",
]

log = structlog.get_logger("aiowt.actors")


class BreakerState(enum.Enum):
    """The circuit's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admit(Request["Admission"]):
    """Ask whether a new session may run."""


@dataclass(frozen=True, slots=True)
class SessionSucceeded(Request[BreakerState]):
    """An admitted session ended well (`probe_id` from its `Admission`)."""

    probe_id: int | None = None


@dataclass(frozen=True, slots=True)
class SessionFailed(Request[BreakerState]):
    """An admitted session failed (`probe_id` from its `Admission`)."""

    probe_id: int | None = None


@dataclass(frozen=True, slots=True)
class SessionNotRun(Request[BreakerState]):
    """An admitted session never ran (refused further on): frees a probe slot only."""

    probe_id: int | None = None


@dataclass(frozen=True, slots=True)
class GetBreakerStatus(Request["BreakerStatus"]):
    """Ask for the state and its counters."""


@dataclass(frozen=True, slots=True)
class ResetBreaker(Request[BreakerState]):
    """Force the circuit closed and forget failures and probes."""


# --- replies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict for one session."""

    allowed: bool
    state: BreakerState
    probe_id: int | None = None
    """Set when the session is a half-open probe; report it back with the outcome."""
    retry_after: float = 0.0
    """When refused: seconds until it is worth trying again."""


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """The state, the failures inside the window (closed), and probes in flight."""

    state: BreakerState
    failures: int
    probes: int


# --- the actor ----------------------------------------------------------------------------


class Breaker(Service):
    """The circuit breaker actor. Messages: `Admit`, `SessionSucceeded`, `SessionFailed`,
    `SessionNotRun`, `GetBreakerStatus`, `ResetBreaker`.

    `clock` (default `time.monotonic`) is called once per message; tests inject a fake
    one. With `metrics`, it reports to the collector (labelled with `name`): its state
    (gauge ``aiowt_circuit_breaker_state{state}``, 1 for the current state), its
    transitions and the failures in its window (`aiowt.actors.metric_names`).
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        window: float = 60.0,
        cooldown: float = 30.0,
        half_open_max: int = 1,
        probe_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: pykka.ActorRef[MetricsCollector] | None = None,
        name: str = "default",
    ) -> None:
        super().__init__()
        validate_breaker_settings(
            threshold=threshold,
            window=window,
            cooldown=cooldown,
            half_open_max=half_open_max,
            probe_timeout=probe_timeout,
        )
        if not callable(clock):
            raise UsageError("clock must be a callable returning seconds")
        self.threshold = threshold
        self.window = float(window)
        self.cooldown = float(cooldown)
        self.half_open_max = half_open_max
        self.probe_timeout = float(cooldown if probe_timeout is None else probe_timeout)
        self.name = name
        self._clock = clock
        self._metrics = metrics
        self._state = BreakerState.CLOSED
        self._failures: deque[float] = deque(maxlen=threshold)
        self._opened_at = 0.0
        self._probes: dict[int, float] = {}  # probe id -> admitted at
        self._next_probe = 1

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.name!r} {self._state.value} threshold={self.threshold} "
            f"window={self.window} cooldown={self.cooldown} half_open_max={self.half_open_max}>"
        )

    def on_start(self) -> None:
        self._report_state()

    # --- messages ------------------------------------------------------------------------------
    @handles(Admit)
    def _admit(self, message: Admit) -> Admission:
        now = self._advance()
        state = self._state
        if state is BreakerState.CLOSED:
            return Admission(True, state)
        if state is BreakerState.OPEN:
            return Admission(False, state, retry_after=self._opened_at + self.cooldown - now)
        if len(self._probes) < self.half_open_max:
            probe_id = self._next_probe
            self._next_probe += 1
            self._probes[probe_id] = now
            return Admission(True, state, probe_id=probe_id)
        oldest = min(self._probes.values())
        return Admission(False, state, retry_after=max(0.0, oldest + self.probe_timeout - now))

    @handles(SessionSucceeded)
    def _succeeded(self, message: SessionSucceeded) -> BreakerState:
        probe = _probe_id(message.probe_id)
        self._advance()
        if self._take_probe(probe):
            self._close()
        return self._state

    @handles(SessionFailed)
    def _failed(self, message: SessionFailed) -> BreakerState:
        probe = _probe_id(message.probe_id)
        now = self._advance()
        if self._take_probe(probe):
            self._open(now)
        elif self._state is BreakerState.CLOSED:
            self._failures.append(now)
            self._forget_old_failures(now)
            if len(self._failures) >= self.threshold:
                self._open(now)
            else:
                self._report_failures()
        return self._state

    @handles(SessionNotRun)
    def _not_run(self, message: SessionNotRun) -> BreakerState:
        probe = _probe_id(message.probe_id)
        self._advance()
        self._take_probe(probe)
        return self._state

    @handles(GetBreakerStatus)
    def _status(self, message: GetBreakerStatus) -> BreakerStatus:
        now = self._advance()
        if self._state is BreakerState.CLOSED:
            self._forget_old_failures(now)
        return BreakerStatus(self._state, len(self._failures), len(self._probes))

    @handles(ResetBreaker)
    def _reset(self, message: ResetBreaker) -> BreakerState:
        self._close()
        return self._state

    # --- transitions ---------------------------------------------------------------------------
    def _clock_now(self) -> float:
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, int | float) or math.isnan(now):
            raise UsageError(f"the breaker's clock returned {now!r}, not seconds")
        return float(now)

    def _advance(self) -> float:
        """Apply the transitions that time alone causes; return the time."""
        now = self._clock_now()
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.cooldown:
            self._set_state(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN and any(
            now >= admitted + self.probe_timeout for admitted in self._probes.values()
        ):
            self._close()
        return now

    def _take_probe(self, probe_id: int | None) -> bool:
        """Remove a probe in flight; False for None or a stale id."""
        return probe_id is not None and self._probes.pop(probe_id, None) is not None

    def _forget_old_failures(self, now: float) -> None:
        horizon = now - self.window
        failures = self._failures
        while failures and failures[0] <= horizon:
            failures.popleft()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probes.clear()
        self._failures.clear()
        self._set_state(BreakerState.OPEN)

    def _close(self) -> None:
        self._probes.clear()
        self._failures.clear()
        self._set_state(BreakerState.CLOSED)

    def _set_state(self, state: BreakerState) -> None:
        if state is self._state:
            return
        log.info("circuit state changed", breaker=self.name, old=self._state.value, new=state.value)
        self._state = state
        labels = {"breaker": self.name, "to": state.value}
        tell_quietly(self._metrics, Inc(BREAKER_TRANSITIONS.name, labels=labels))
        self._report_state()

    def _report_state(self) -> None:
        for state in BreakerState:
            current = 1 if state is self._state else 0
            labels = {"breaker": self.name, "state": state.value}
            tell_quietly(self._metrics, SetGauge(BREAKER_STATE.name, current, labels))
        self._report_failures()

    def _report_failures(self) -> None:
        labels = {"breaker": self.name}
        tell_quietly(self._metrics, SetGauge(BREAKER_FAILURES.name, len(self._failures), labels))


def validate_breaker_settings(
    *,
    threshold: object,
    window: object,
    cooldown: object,
    half_open_max: object,
    probe_timeout: object = None,
) -> None:
    """Raise `UsageError` unless the settings make a working breaker."""
    _positive_int("threshold", threshold)
    _positive_int("half_open_max", half_open_max)
    _positive_number("window", window)
    _positive_number("cooldown", cooldown)
    if probe_timeout is not None:
        _positive_number("probe_timeout", probe_timeout)


def _probe_id(probe_id: object) -> int | None:
    if probe_id is not None and (isinstance(probe_id, bool) or not isinstance(probe_id, int)):
        raise UsageError(f"probe_id must be an int or None, got {probe_id!r}")
    return probe_id


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive int, got {value!r}")


def _positive_number(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")


__getattr__ = deprecated_names(
    __name__,
    {
        "CircuitBreaker": (
            "Breaker (the middleware that gates handshakes on it is"
            " aiowt.middleware.CircuitBreaker)",
            lambda: Breaker,
        )
    },
)
