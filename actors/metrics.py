"""`MetricsCollector`: the single owner of counters, gauges and histograms.

Everything that counts (limits, the breaker, the stats middleware, handlers) tells the
collector; nothing else keeps a shared counter. Reading is by `TakeSnapshot()`, which
returns an immutable `MetricsSnapshot` that is easy to walk (the Prometheus exposition
renders from it): family name -> kind, help, series {label set -> value}.

The metrics aiowt itself reports are declared in `aiowt.actors.metric_names` (names,
labels, help texts); the collector fills in their help from there.

Label sets are bounded: each metric keeps at most `max_series` distinct label sets;
samples for further ones fold into the series `{"overflow": "true"}` and are counted in
the family's `overflowed`. A metric name is created by its first sample, with the kind
of that sample; a later sample of another kind is a `UsageError` (and changes nothing).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from aiowt.transport.errors import UsageError

from ._service import Request, Service, handles
from .metric_names import CATALOGUE

__all__ = [
    "DEFAULT_BUCKETS",
    "AddGauge",
    "HistogramValue",
    "Inc",
    "LabelSet",
    "MetricFamily",
    "MetricKind",
    "MetricsCollector",
    "MetricsSnapshot",
    "Observe",
    "OVERFLOW_LABELS",
    "SetGauge",
    "TakeSnapshot",
    "label_set",
]

MetricKind = Literal["counter", "gauge", "histogram"]
LabelSet = tuple[tuple[str, str], ...]
"""Labels as sorted (name, value) pairs: hashable, and the same for equal mappings."""

OVERFLOW_LABELS: LabelSet = (("overflow", "true"),)

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Prometheus' default histogram buckets (seconds-scaled); `+Inf` is always added."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def label_set(labels: Mapping[str, str] | None) -> LabelSet:
    """The canonical `LabelSet` of a mapping (validated: Prometheus label names, str values)."""
    if not labels:
        return ()
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL.match(name) or name.startswith("__"):
            raise UsageError(f"invalid label name {name!r}")
        if not isinstance(value, str):
            raise UsageError(f"label {name!r} needs a str value, got {value!r}")
    return tuple(sorted(labels.items()))


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inc:
    """Add `value` (>= 0) to counter `name`."""

    name: str
    value: float = 1
    labels: Mapping[str, str] | None = None
    help: str = ""


@dataclass(frozen=True, slots=True)
class SetGauge:
    """Set gauge `name` to `value`."""

    name: str
    value: float
    labels: Mapping[str, str] | None = None
    help: str = ""


@dataclass(frozen=True, slots=True)
class AddGauge:
    """Add `delta` (may be negative) to gauge `name`.

    With `peak` set, gauge `peak` (no labels) is raised to the total of `name` over all
    its label sets, if that is higher: the family's high-water mark, kept exactly
    because both change in one message.
    """

    name: str
    delta: float
    labels: Mapping[str, str] | None = None
    help: str = ""
    peak: str | None = None


@dataclass(frozen=True, slots=True)
class Observe:
    """Record `value` in histogram `name` (`buckets` apply when the metric is created)."""

    name: str
    value: float
    labels: Mapping[str, str] | None = None
    help: str = ""
    buckets: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class TakeSnapshot(Request["MetricsSnapshot"]):
    """Ask for an immutable copy of every metric."""


# --- the snapshot -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """One histogram series: cumulative counts per upper bound (the last is `inf`)."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


Sample = float | HistogramValue


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One metric: its kind, help text, and value per label set."""

    name: str
    kind: MetricKind
    help: str
    series: Mapping[LabelSet, Sample]
    overflowed: int
    """Samples folded into the overflow series because the label-set cap was reached."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every metric at one moment; immutable (read-only mappings of frozen values)."""

    families: Mapping[str, MetricFamily]

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A counter's or gauge's value for `labels`; 0 if it has none yet."""
        family = self.families.get(name)
        if family is None:
            return 0
        sample = family.series.get(label_set(labels), 0)
        if isinstance(sample, HistogramValue):
            raise UsageError(f"{name} is a histogram; use histogram()")
        return sample

    def total(self, name: str) -> float:
        """A counter's or gauge's values summed over all its label sets."""
        family = self.families.get(name)
        if family is None:
            return 0
        return sum(s for s in family.series.values() if not isinstance(s, HistogramValue))

    def histogram(self, name: str, labels: Mapping[str, str] | None = None) -> HistogramValue:
        """A histogram's series for `labels` (empty if none was observed)."""
        family = self.families.get(name)
        sample = None if family is None else family.series.get(label_set(labels))
        if sample is None:
            return HistogramValue(buckets=(), sum=0, count=0)
        if not isinstance(sample, HistogramValue):
            raise UsageError(f"{name} is not a histogram")
        return sample


# --- the actor ----------------------------------------------------------------------------


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, bounds: int) -> None:
        self.counts = [0] * (bounds + 1)  # the last one is +Inf
        self.sum = 0.0

    def frozen(self, bounds: tuple[float, ...]) -> HistogramValue:
        cumulative = 0
        buckets: list[tuple[float, int]] = []
        for bound, count in zip((*bounds, math.inf), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramValue(tuple(buckets), self.sum, cumulative)


class _Family:
    __slots__ = ("bounds", "help", "kind", "name", "overflowed", "series")

    def __init__(self, name: str, kind: MetricKind, help: str, bounds: tuple[float, ...]):
        self.name = name
        self.kind: MetricKind = kind
        self.help = help
        self.bounds = bounds
        self.series: dict[LabelSet, float | _Histogram] = {}
        self.overflowed = 0


class MetricsCollector(Service):
    """The actor that owns all metrics. Messages: `Inc`, `SetGauge`, `AddGauge`,
    `Observe` (tell them) and `TakeSnapshot` (ask it).

    `max_series` caps the label sets per metric, `max_metrics` the metric names (a
    sample for a new name past it is a `UsageError`).
    """

    def __init__(self, *, max_series: int = 100, max_metrics: int = 1000) -> None:
        super().__init__()
        if not isinstance(max_series, int) or max_series < 1:
            raise UsageError(f"max_series must be a positive int, got {max_series!r}")
        if not isinstance(max_metrics, int) or max_metrics < 1:
            raise UsageError(f"max_metrics must be a positive int, got {max_metrics!r}")
        self.max_series = max_series
        self.max_metrics = max_metrics
        self._families: dict[str, _Family] = {}

    def __repr__(self) -> str:
        return f"<MetricsCollector metrics={len(self._families)} max_series={self.max_series}>"

    # Each handler validates everything first (`_plan` changes nothing), then commits in
    # steps that cannot raise (see `Service`).

    @handles(Inc)
    def _inc(self, message: Inc) -> None:
        value = _number(message.value)
        if value < 0:
            raise UsageError(f"counter {message.name} can only go up, got {value!r}")
        family, key = self._commit(
            self._plan(message.name, "counter", message.labels, message.help)
        )
        current = family.series.get(key, 0)
        assert not isinstance(current, _Histogram)
        family.series[key] = current + value

    @handles(SetGauge)
    def _set_gauge(self, message: SetGauge) -> None:
        value = _number(message.value)
        family, key = self._commit(self._plan(message.name, "gauge", message.labels, message.help))
        family.series[key] = value

    @handles(AddGauge)
    def _add_gauge(self, message: AddGauge) -> None:
        delta = _number(message.delta)
        plan = self._plan(message.name, "gauge", message.labels, message.help)
        peak_plan = None
        if message.peak is not None:
            peak_plan = self._plan(message.peak, "gauge", None, "")
            if message.peak == message.name:
                raise UsageError("a gauge cannot be its own peak")
            if plan.new and peak_plan.new and len(self._families) + 2 > self.max_metrics:
                raise UsageError(f"more than {self.max_metrics} metrics")
        family, key = self._commit(plan)
        current = family.series.get(key, 0)
        assert not isinstance(current, _Histogram)
        family.series[key] = current + delta
        if peak_plan is not None:
            total = sum(v for v in family.series.values() if not isinstance(v, _Histogram))
            peak, peak_key = self._commit(peak_plan)
            old_peak = peak.series.get(peak_key)
            assert not isinstance(old_peak, _Histogram)
            if old_peak is None or total > old_peak:
                peak.series[peak_key] = total

    @handles(Observe)
    def _observe(self, message: Observe) -> None:
        value = _number(message.value)
        bounds = _buckets(message.buckets)
        plan = self._plan(message.name, "histogram", message.labels, message.help, bounds)
        family, key = self._commit(plan)
        histogram = family.series.get(key)
        if histogram is None:
            histogram = family.series[key] = _Histogram(len(family.bounds))
        assert isinstance(histogram, _Histogram)
        histogram.counts[bisect.bisect_left(family.bounds, value)] += 1
        histogram.sum += value

    @handles(TakeSnapshot)
    def _snapshot(self, message: TakeSnapshot) -> MetricsSnapshot:
        families: dict[str, MetricFamily] = {}
        for family in self._families.values():
            series: dict[LabelSet, Sample] = {}
            for key, sample in family.series.items():
                series[key] = (
                    sample.frozen(family.bounds) if isinstance(sample, _Histogram) else sample
                )
            families[family.name] = MetricFamily(
                family.name, family.kind, family.help, MappingProxyType(series), family.overflowed
            )
        return MetricsSnapshot(MappingProxyType(families))

    # --- helpers -------------------------------------------------------------------------------
    def _plan(
        self,
        name: str,
        kind: MetricKind,
        labels: Mapping[str, str] | None,
        help: str,
        bounds: tuple[float, ...] = (),
    ) -> _Plan:
        """Validate a sample's target; changes nothing."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(f"invalid metric name {name!r}")
        if not isinstance(help, str):
            raise UsageError(f"help for {name} must be a str")
        key = label_set(labels)
        family = self._families.get(name)
        if family is None:
            if len(self._families) >= self.max_metrics:
                raise UsageError(f"more than {self.max_metrics} metrics; {name} not created")
            return _Plan(name, kind, help, bounds or DEFAULT_BUCKETS, key, True)
        if family.kind != kind:
            raise UsageError(f"{name} is a {family.kind}, not a {kind}")
        return _Plan(name, kind, help, family.bounds, key, False)

    def _commit(self, plan: _Plan) -> tuple[_Family, LabelSet]:
        """The family (created if new) and the series key (folded if over the cap)."""
        family = self._families.get(plan.name)
        if family is None:
            spec = CATALOGUE.get(plan.name)
            family = self._families[plan.name] = _Family(
                plan.name, plan.kind, plan.help or (spec.help if spec else ""), plan.bounds
            )
        elif plan.help and not family.help:
            family.help = plan.help
        key = plan.key
        if key not in family.series:
            # The overflow series itself does not count against the cap.
            cap = self.max_series + (1 if OVERFLOW_LABELS in family.series else 0)
            if len(family.series) >= cap:
                family.overflowed += 1
                key = OVERFLOW_LABELS
        return family, key


@dataclass(frozen=True, slots=True)
class _Plan:
    name: str
    kind: MetricKind
    help: str
    bounds: tuple[float, ...]
    key: LabelSet
    new: bool


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"a metric value must be an int or float, got {value!r}")
    if math.isnan(value):
        raise UsageError("a metric value cannot be NaN")
    return value


def _buckets(buckets: tuple[float, ...] | None) -> tuple[float, ...]:
    if buckets is None:
        return ()
    bounds = tuple(buckets)
    if not bounds or any(_number(b) != b or math.isinf(b) for b in bounds):
        raise UsageError(f"buckets must be finite numbers, got {buckets!r}")
    if list(bounds) != sorted(set(bounds)):
        raise UsageError(f"buckets must be strictly increasing, got {buckets!r}")
    return bounds
