"""Snapshots between processes: the wire form round-trips, and merging adds up what
adds up (counters, gauges, histograms) and takes the highest of high-water marks."""

from __future__ import annotations

import math

import msgpack
import pytest

from aiowt.actors import MetricsCollector, ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import AddGauge, HistogramValue, Inc, Observe, TakeSnapshot
from aiowt.actors.snapshots import decode_snapshot, encode_snapshot, merge_snapshots


async def _snapshot(sessions: int, handshakes: int, seconds: list[float], peak: int) -> object:
    ref = MetricsCollector.start()
    try:
        for _ in range(handshakes):
            ref.tell(Inc(names.HANDSHAKES.name, labels={"route": "/a", "status": "200"}))
        ref.tell(AddGauge(names.SESSIONS_ACTIVE.name, sessions, labels={"route": "/a"}))
        ref.tell(AddGauge(names.SESSIONS_ACTIVE_PEAK.name, peak))
        for value in seconds:
            ref.tell(Observe(names.HANDSHAKE_SECONDS.name, value, labels={"route": "/a"}))
        return await ask(ref, TakeSnapshot())
    finally:
        await ref.stop(block=False)


async def test_a_snapshot_survives_the_wire() -> None:
    snapshot = await _snapshot(3, 5, [0.002, 0.3], 4)
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot  # type: ignore[arg-type]


async def test_merging_adds_up_and_keeps_the_highest_peak() -> None:
    one = await _snapshot(3, 5, [0.002, 0.3], 4)
    two = await _snapshot(2, 7, [0.002], 9)
    merged = merge_snapshots([one, two])  # type: ignore[list-item]
    assert merged.value(names.HANDSHAKES.name, {"route": "/a", "status": "200"}) == 12
    assert merged.value(names.SESSIONS_ACTIVE.name, {"route": "/a"}) == 5
    assert merged.value(names.SESSIONS_ACTIVE_PEAK.name) == 9
    histogram = merged.histogram(names.HANDSHAKE_SECONDS.name, {"route": "/a"})
    assert (histogram.count, histogram.sum) == (3, pytest.approx(0.304))
    assert dict(histogram.buckets)[0.005] == 2
    assert dict(histogram.buckets)[math.inf] == 3


def test_histograms_with_different_bounds_still_merge_cumulatively() -> None:
    from aiowt.actors.snapshots import _add_histograms

    a = HistogramValue(((1.0, 2), (math.inf, 3)), 4.0, 3)
    b = HistogramValue(((0.5, 1), (2.0, 1), (math.inf, 2)), 3.0, 2)
    merged = _add_histograms(a, b)
    assert merged.buckets == ((0.5, 1), (1.0, 3), (2.0, 3), (math.inf, 5))
    assert (merged.sum, merged.count) == (7.0, 5)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"m": ["summary", "", 0, []]}),
        msgpack.packb({"m": ["counter", "", 0, [[[["a", "b"]], "x"]]]}),
        msgpack.packb({"m": ["histogram", "", 0, [[[], 3]]]}),
    ],
)
def test_anything_else_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a metrics snapshot"):
        decode_snapshot(data)
