"""Metrics snapshots between processes: one wire form, and the sum of many.

Under ``aiowt run --workers N`` each worker keeps its own `MetricsCollector`; the
supervisor asks every worker for a snapshot (`encode_snapshot` on the way out,
`decode_snapshot` on the way in) and shows their sum (`merge_snapshots`), so one scrape
shows the totals of all the workers, each read at the moment of the scrape.

Merging is exact for what adds up: counters, gauges of current amounts (sessions
active, breakers in a state), histograms (bucket by bucket). A high-water mark does not
add up: the workers' peaks need not have happened at once. Those gauges
(`HIGH_WATER_MARKS`) merge as the highest of the workers', a lower bound of the
cluster's own peak (their sum is an upper bound).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from types import MappingProxyType
from typing import Any, Final, cast

import msgpack

from . import metric_names as names
from .metrics import HistogramValue, LabelSet, MetricFamily, MetricKind, MetricsSnapshot, Sample

__all__ = ["HIGH_WATER_MARKS", "decode_snapshot", "encode_snapshot", "merge_snapshots"]

HIGH_WATER_MARKS: Final = frozenset({names.SESSIONS_ACTIVE_PEAK.name})
"""Gauges that are a process's highest value so far: merged by their maximum."""

_KINDS: Final = ("counter", "gauge", "histogram")


def encode_snapshot(snapshot: MetricsSnapshot) -> bytes:
    """The snapshot as msgpack (labels as pairs, histograms as [buckets, sum, count])."""
    families = {
        family.name: [
            family.kind,
            family.help,
            family.overflowed,
            [[list(labels), _encode_sample(sample)] for labels, sample in family.series.items()],
        ]
        for family in snapshot.families.values()
    }
    packed: bytes = msgpack.packb(families)
    return packed


def decode_snapshot(data: bytes) -> MetricsSnapshot:
    """The snapshot `encode_snapshot` wrote; `ValueError` for anything else."""
    try:
        raw = msgpack.unpackb(data, strict_map_key=True)
        families: dict[str, MetricFamily] = {}
        for name, (kind, help_text, overflowed, series) in raw.items():
            if kind not in _KINDS:
                raise ValueError(f"unknown metric kind {kind!r}")
            samples: dict[LabelSet, Sample] = {}
            for labels, sample in series:
                label_pairs = tuple((str(k), str(v)) for k, v in labels)
                samples[label_pairs] = _decode_sample(kind, sample)
            families[str(name)] = MetricFamily(
                str(name), cast(MetricKind, kind), str(help_text), samples, int(overflowed)
            )
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as error:
        raise ValueError(f"not a metrics snapshot: {error}") from None
    return MetricsSnapshot(MappingProxyType(families))


def merge_snapshots(
    snapshots: Iterable[MetricsSnapshot], *, high_water_marks: Collection[str] = HIGH_WATER_MARKS
) -> MetricsSnapshot:
    """The sum of `snapshots`, series by series (see the module for what does not add up).

    A family that two snapshots give different kinds keeps the first one's kind, and the
    other's samples are left out.
    """
    merged: dict[str, tuple[MetricFamily, dict[LabelSet, Sample]]] = {}
    overflowed: dict[str, int] = {}
    for snapshot in snapshots:
        for name, family in snapshot.families.items():
            if name not in merged:
                merged[name] = (family, {})
            first, series = merged[name]
            if family.kind != first.kind:
                continue
            overflowed[name] = overflowed.get(name, 0) + family.overflowed
            for labels, sample in family.series.items():
                known = series.get(labels)
                if known is None:
                    series[labels] = sample
                elif isinstance(known, HistogramValue) and isinstance(sample, HistogramValue):
                    series[labels] = _add_histograms(known, sample)
                elif isinstance(known, HistogramValue) or isinstance(sample, HistogramValue):
                    continue
                elif name in high_water_marks:
                    series[labels] = max(known, sample)
                else:
                    series[labels] = known + sample
    return MetricsSnapshot(
        MappingProxyType(
            {
                name: MetricFamily(
                    name, first.kind, first.help, MappingProxyType(series), overflowed[name]
                )
                for name, (first, series) in merged.items()
            }
        )
    )


def _encode_sample(sample: Sample) -> Any:
    if isinstance(sample, HistogramValue):
        return [[list(bucket) for bucket in sample.buckets], sample.sum, sample.count]
    return sample


def _decode_sample(kind: str, sample: Any) -> Sample:
    if kind != "histogram":
        if isinstance(sample, bool) or not isinstance(sample, int | float):
            raise TypeError(f"a {kind} value is a number, got {sample!r}")
        return sample
    buckets, total, count = sample
    return HistogramValue(
        tuple((float(bound), int(n)) for bound, n in buckets), float(total), int(count)
    )


def _add_histograms(a: HistogramValue, b: HistogramValue) -> HistogramValue:
    """Bucket by bucket. Workers run the same code, so their bounds are the same; where
    they are not, each side counts at a bound what it counted at its last bound below."""
    bounds = sorted({bound for bound, _ in a.buckets} | {bound for bound, _ in b.buckets})
    return HistogramValue(
        tuple((bound, _cumulative(a, bound) + _cumulative(b, bound)) for bound in bounds),
        a.sum + b.sum,
        a.count + b.count,
    )


def _cumulative(histogram: HistogramValue, bound: float) -> int:
    counted = 0
    for upper, count in histogram.buckets:
        if upper > bound:
            break
        counted = count
    return counted
