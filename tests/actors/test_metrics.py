"""`MetricsCollector`: kinds, peaks, histograms, bounded label sets, immutable snapshots,
and a concurrent model check."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiowt.actors import ask
from aiowt.actors.metrics import (
    DEFAULT_BUCKETS,
    OVERFLOW_LABELS,
    AddGauge,
    HistogramValue,
    Inc,
    MetricsCollector,
    Observe,
    SetGauge,
    TakeSnapshot,
    label_set,
)
from aiowt.transport.errors import UsageError
from tests.actors.test_service_harness import (
    Failed,
    Program,
    check_history,
    drive,
    recording,
    take_history,
)


async def test_counters_gauges_and_the_exact_peak() -> None:
    ref = MetricsCollector.start()
    try:
        ref.tell(Inc("hits_total", help="Hits."))
        ref.tell(Inc("hits_total", 2.5))
        ref.tell(Inc("hits_total", labels={"route": "/a"}))
        ref.tell(SetGauge("temperature", 21))
        for delta in (1, 1, 1, -1, -1, 1, -1, -1):
            ref.tell(AddGauge("active", delta, peak="active_peak"))
        snap = await ask(ref, TakeSnapshot())
        assert snap.value("hits_total") == 3.5
        assert snap.value("hits_total", {"route": "/a"}) == 1
        assert snap.total("hits_total") == 4.5
        assert snap.families["hits_total"].help == "Hits."
        assert snap.families["hits_total"].kind == "counter"
        assert snap.value("temperature") == 21
        assert snap.value("active") == 0
        assert snap.value("active_peak") == 3
        assert snap.value("never_seen") == 0
    finally:
        await ref.stop(block=False)


async def test_the_peak_of_a_labelled_gauge_is_the_most_its_series_held_together() -> None:
    ref = MetricsCollector.start()
    try:
        for route, delta in (("/a", 1), ("/b", 1), ("/a", -1), ("/b", 1), ("/b", -1)):
            ref.tell(AddGauge("active", delta, {"route": route}, peak="active_peak"))
        snap = await ask(ref, TakeSnapshot())
        # /a and /b never held more than 2 between them, though /b alone reached 2.
        assert snap.value("active_peak") == 2
        assert snap.total("active") == 1
        ref.tell(AddGauge("active", 2, {"route": "/c"}, peak="active_peak"))
        assert (await ask(ref, TakeSnapshot())).value("active_peak") == 3
    finally:
        await ref.stop(block=False)


async def test_histograms_are_cumulative_with_an_inf_bucket() -> None:
    ref = MetricsCollector.start()
    try:
        for value in (0.5, 1.0, 1.5, 99):
            ref.tell(Observe("size", value, buckets=(1.0, 2.0)))
        ref.tell(Observe("latency", 0.003))
        snap = await ask(ref, TakeSnapshot())
        assert snap.histogram("size") == HistogramValue(
            buckets=((1.0, 2), (2.0, 3), (math.inf, 4)), sum=102.0, count=4
        )
        latency = snap.histogram("latency")
        assert [bound for bound, _ in latency.buckets] == [*DEFAULT_BUCKETS, math.inf]
        assert latency.buckets[0] == (0.005, 1)
        assert snap.histogram("missing").count == 0
        with pytest.raises(UsageError):
            snap.value("size")
    finally:
        await ref.stop(block=False)


async def test_label_sets_beyond_the_cap_fold_into_overflow_and_are_counted() -> None:
    ref = MetricsCollector.start(max_series=2)
    try:
        for n in range(5):
            ref.tell(Inc("per_user_total", labels={"user": f"u{n}"}))
        ref.tell(Inc("per_user_total", labels={"user": "u0"}))  # known: not folded
        snap = await ask(ref, TakeSnapshot())
        family = snap.families["per_user_total"]
        assert dict(family.series) == {
            (("user", "u0"),): 2,
            (("user", "u1"),): 1,
            OVERFLOW_LABELS: 3,
        }
        assert family.overflowed == 3
    finally:
        await ref.stop(block=False)


async def test_snapshots_are_immutable_copies() -> None:
    ref = MetricsCollector.start()
    try:
        ref.tell(Inc("n_total"))
        first = await ask(ref, TakeSnapshot())
        ref.tell(Inc("n_total"))
        second = await ask(ref, TakeSnapshot())
        assert (first.value("n_total"), second.value("n_total")) == (1, 2)
        with pytest.raises(TypeError):
            first.families["x"] = first.families["n_total"]  # type: ignore[index]
        with pytest.raises(TypeError):
            first.families["n_total"].series[()] = 5  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            first.families["n_total"].overflowed = 3  # type: ignore[misc]
    finally:
        await ref.stop(block=False)


async def test_a_name_keeps_its_kind() -> None:
    ref = MetricsCollector.start()
    try:
        ref.tell(Inc("thing"))
        with pytest.raises(UsageError, match="thing is a counter, not a gauge"):
            await ref.ask(SetGauge("thing", 1), block=False)
    finally:
        await ref.stop(block=False)


def test_label_sets_are_canonical_and_validated() -> None:
    assert label_set({"b": "2", "a": "1"}) == (("a", "1"), ("b", "2"))
    assert label_set(None) == label_set({}) == ()
    for bad in ({"1a": "x"}, {"a-b": "x"}, {"__name": "x"}, {"a": 1}):
        with pytest.raises(UsageError):
            label_set(bad)  # type: ignore[arg-type]


def test_collector_options_are_validated() -> None:
    for options in ({"max_series": 0}, {"max_metrics": 0}, {"max_series": "10"}):
        with pytest.raises(UsageError):
            MetricsCollector(**options)  # type: ignore[arg-type]


# --- the concurrent model check -------------------------------------------------------------

CAP = 3
BOUNDS = (1.0, 10.0)


class MetricsModel:
    def __init__(self) -> None:
        self.families: dict[str, dict[str, Any]] = {}

    def _key(self, family: dict[str, Any], labels: dict[str, str] | None) -> tuple[Any, ...]:
        key = tuple(sorted((labels or {}).items()))
        series = family["series"]
        if key not in series:
            cap = CAP + (1 if OVERFLOW_LABELS in series else 0)
            if len(series) >= cap:
                family["overflowed"] += 1
                return OVERFLOW_LABELS
        return key

    def _family(self, name: str, kind: str) -> dict[str, Any] | Failed:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = {"kind": kind, "series": {}, "overflowed": 0}
        elif family["kind"] != kind:
            return Failed("UsageError")
        return family

    def apply(self, message: Any) -> object:
        if isinstance(message, Inc):
            if message.value < 0:
                return Failed("UsageError")
            family = self._family(message.name, "counter")
            if isinstance(family, Failed):
                return family
            key = self._key(family, message.labels)
            family["series"][key] = family["series"].get(key, 0) + message.value
            return None
        if isinstance(message, AddGauge):
            family = self._family(message.name, "gauge")
            if isinstance(family, Failed):
                return family
            key = self._key(family, message.labels)
            family["series"][key] = family["series"].get(key, 0) + message.delta
            if message.peak is not None:
                total = sum(family["series"].values())
                peak = self._family(message.peak, "gauge")
                assert not isinstance(peak, Failed)
                peak_key = self._key(peak, None)
                if peak_key not in peak["series"] or total > peak["series"][peak_key]:
                    peak["series"][peak_key] = total
            return None
        if isinstance(message, Observe):
            family = self._family(message.name, "histogram")
            if isinstance(family, Failed):
                return family
            key = self._key(family, message.labels)
            counts, total = family["series"].get(key, ((0,) * (len(BOUNDS) + 1), 0.0))
            index = next((i for i, b in enumerate(BOUNDS) if message.value <= b), len(BOUNDS))
            counts = tuple(c + (1 if i == index else 0) for i, c in enumerate(counts))
            family["series"][key] = (counts, total + message.value)
            return None
        return Failed("UnknownMessage")

    def view(self) -> object:
        return sorted(
            (name, f["kind"], sorted(f["series"].items()), f["overflowed"])
            for name, f in self.families.items()
        )


def collector_view(actor: MetricsCollector) -> object:
    view = []
    for name, family in actor._families.items():
        series = []
        for key, sample in family.series.items():
            if isinstance(sample, float | int):
                series.append((key, sample))
            else:
                series.append((key, (tuple(sample.counts), sample.sum)))
        view.append((name, family.kind, sorted(series), family.overflowed))
    return sorted(view)


USERS = [{"user": f"u{n}"} for n in range(5)]
labels = st.sampled_from([None, *USERS])
step = st.one_of(
    st.builds(lambda lb, v: ("inc", lb, v), labels, st.integers(0, 3)),
    st.builds(lambda lb: ("session", lb, 0), labels),
    st.builds(lambda lb, v: ("observe", lb, v), labels, st.sampled_from([0.5, 1.0, 5, 10, 50])),
    st.just(("bad", None, 0)),
)


def reporter(steps: list[tuple[str, Any, Any]]) -> Program:
    """Tells like a middleware would; each "session" adds 1 to active, later takes it back."""
    opened: list[Any] = []
    for kind, lbl, value in steps:
        if kind == "inc":
            yield Inc("events_total", value, labels=lbl), "tell"
        elif kind == "session":
            yield AddGauge("active", 1, labels=lbl, peak="active_peak"), "tell"
            opened.append(lbl)
        elif kind == "observe":
            yield Observe("size", value, labels=lbl, buckets=BOUNDS), "tell"
        else:
            yield Inc("events_total", -1), "ask"  # counters only go up: refused
    for lbl in opened:
        yield AddGauge("active", -1, labels=lbl), "tell"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task_reporters=st.lists(st.lists(step, max_size=8), min_size=1, max_size=8),
    thread_reporters=st.lists(st.lists(step, max_size=8), max_size=3),
)
def test_concurrent_reporters_match_the_sequential_model(
    task_reporters: list[Any], thread_reporters: list[Any]
) -> None:
    async def scenario() -> None:
        ref = recording(MetricsCollector, collector_view).start(max_series=CAP)
        try:
            sents = await drive(
                ref, [reporter(s) for s in task_reporters], [reporter(s) for s in thread_reporters]
            )
            check_history(await take_history(ref), sents, MetricsModel())
            snap = await ask(ref, TakeSnapshot())
            active = snap.families.get("active")
            if active is not None:
                assert set(active.series.values()) == {0}, "a gauge is not back to zero"
            everyone = [*task_reporters, *thread_reporters]
            expected = sum(v for steps in everyone for k, _, v in steps if k == "inc")
            assert snap.total("events_total") == expected
        finally:
            await ref.stop(block=False)

    asyncio.run(scenario())
