"""The catalogue of metric names: Prometheus conventions, and every metric aiowt reports
is in it, with the kind and the labels it declares."""

from __future__ import annotations

import re
from typing import Any

import pytest

from aiowt import Server
from aiowt.actors import Handler, ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricsCollector, TakeSnapshot
from aiowt.middleware import (
    Bandwidth,
    CircuitBreaker,
    ConcurrencyStats,
    DepthGuard,
    MaxSessions,
    Metrics,
    RateLimit,
    Recover,
    Status,
    TokenBucket,
)
from aiowt.transport import HandshakeError, Stream, StreamClosedError
from tests.conftest import Unwound, bounded

SPECS = list(names.CATALOGUE.values())


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_names_follow_prometheus_conventions(spec: names.MetricSpec) -> None:
    assert re.fullmatch(r"aiowt_[a-z_]+", spec.name)
    assert spec.name.endswith("_total") == (spec.kind == "counter")
    if spec.kind == "histogram":
        assert spec.name.endswith("_seconds")
    assert spec.help.endswith(".")
    assert all(re.fullmatch(r"[a-z_]+", label) for label in spec.labels)


def test_one_name_per_fact() -> None:
    """No two names differ only in a suffix or prefix that says the same thing."""
    bases = [spec.name.removesuffix("_total").removeprefix("aiowt_") for spec in SPECS]
    assert len(set(bases)) == len(bases)
    assert len({spec.help for spec in SPECS}) == len(SPECS)


class Busy(Handler):
    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if message == "crash":
            raise RuntimeError("a handler bug")
        if stream is not None:
            stream.send_message(message)


async def test_every_metric_reported_is_in_the_catalogue_as_declared() -> None:
    """A server with every reporting middleware, and traffic that makes each report."""
    unwound = Unwound()
    server = Server()
    server.use(unwound, Recover(), Metrics(), Status(), ConcurrencyStats(), Bandwidth())
    server.use(CircuitBreaker(threshold=1), MaxSessions(100), TokenBucket(1, 2))
    server.route("/busy", Busy, RateLimit(2), DepthGuard(1))
    session = await server.connect_in_memory("/busy")
    second = await server.connect_in_memory("/busy")
    with pytest.raises(HandshakeError):  # RateLimit(2)
        await server.connect_in_memory("/busy")
    stream = session.open_stream()
    stream.send_message("hello")
    async with bounded():
        assert await stream.receive_message() == "hello"
        refused = session.open_stream()  # DepthGuard(1): the first is still open
        refused.send_message("nope")
        with pytest.raises(StreamClosedError):
            await refused.receive_message()
        for _ in range(3):  # TokenBucket(1, 2): past the burst
            session.send_datagram(b"\x01")
        second.send_datagram_message("crash")
        await second.wait_closed()
    await session.aclose()
    await unwound.wait(3)
    snapshot = await ask(server.services.metrics, TakeSnapshot())
    await server.shutdown()

    reported = {name for name in snapshot.families if name.startswith("aiowt_")}
    assert reported - set(names.CATALOGUE) == set()
    expected = {
        names.HANDSHAKES, names.HANDSHAKE_SECONDS, names.REJECTIONS,
        names.SESSIONS_ACCEPTED, names.SESSIONS_ACTIVE, names.SESSIONS_ACTIVE_PEAK,
        names.SESSION_SECONDS, names.SESSION_ERRORS, names.DATAGRAMS,
        names.DATAGRAM_BYTES, names.STREAM_FRAMES, names.STREAM_BYTES,
        names.STREAMS_OPENED, names.TOKEN_BUCKET_EXCESS, names.STREAMS_REFUSED,
        names.BREAKER_STATE, names.BREAKER_TRANSITIONS, names.BREAKER_FAILURES,
    }  # fmt: skip
    assert {spec.name for spec in expected} <= reported
    for name in reported:
        family, spec = snapshot.families[name], names.CATALOGUE[name]
        assert family.kind == spec.kind, name
        assert family.help == spec.help, name
        for labels in family.series:
            assert tuple(sorted(label for label, _ in labels)) == tuple(sorted(spec.labels)), (
                name,
                labels,
            )
    # Each fact once: six observers and Recover saw the crash; it counts one.
    errors = {"route": "/busy", "stage": "session"}
    assert snapshot.value(names.SESSION_ERRORS.name, errors) == 1
    assert snapshot.total(names.SESSIONS_ACCEPTED.name) == 2


async def test_the_collector_documents_the_catalogue_whoever_reports_first() -> None:
    from aiowt.actors.metrics import Inc

    ref = MetricsCollector.start()
    try:
        ref.tell(Inc(names.HANDSHAKES.name, 1, {"route": "/", "status": "200"}))
        ref.tell(Inc("app_orders_total", 1))
        snapshot = await ask(ref, TakeSnapshot())
        assert snapshot.families[names.HANDSHAKES.name].help == names.HANDSHAKES.help
        assert snapshot.families["app_orders_total"].help == ""
    finally:
        await ref.stop(block=False)
