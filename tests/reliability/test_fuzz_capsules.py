"""Fuzzing what aiowt parses on the CONNECT stream (capsules), and what a peer can put in
stream headers and datagram prefixes around it.

`tests/transport/test_capsule.py` checks the decoder alone; here the bytes go through a
live session: after acceptance, the client writes random capsule streams on its CONNECT
stream (HTTP/3 DATA frames, as `h3.send_data(session_id, ...)` sends them), cut into
random pieces. A reference parser written from the capsule format says what must
happen: a CLOSE_WEBTRANSPORT_SESSION first ends the session with its code and reason (the
handler's `on_stop` sees them, the client sees the server's FIN); a malformed or oversized
capsule first closes it with `PROTOCOL_ERROR`; otherwise the session goes on (each
DRAIN reaches `on_draining`, unknown capsules are ignored) and still echoes. Nothing
escapes, and a bystander session is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from aioquic.buffer import encode_uint_var
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiowt import Server
from aiowt.actors import Handler
from aiowt.transport import CloseCode, CloseInfo, DatagramTooLarge, Session, SessionClosedError
from aiowt.transport._protocol import WebTransportProtocol
from aiowt.transport.capsule import CapsuleDecoder
from aiowt.transport.tls import SelfSignedCertificate
from tests.reliability.support import (
    connections_closed,
    driver,
    scaled,
    watching,
    yield_to_loop,
)

EXAMPLES = scaled(150, 3_000)
STREAM_HEADER_EXAMPLES = scaled(60, 1_500)
CLOSE, DRAIN = 0x2843, 0x78AE
MAX_CAPSULE = 16 * 1024
COUNTS: Counter[str] = Counter()


class Watched(Handler):
    """Echoes datagrams; reports drains and how it stopped."""

    drains: ClassVar[Counter[str]] = Counter()
    stops: ClassVar[dict[str, asyncio.Future[CloseInfo | None]]] = {}

    async def on_start(self) -> None:
        key = self.ctx.request.header("x-case") or ""
        self.stops[key] = asyncio.get_running_loop().create_future()

    async def on_datagram(self, data: bytes) -> None:
        # A peer's packets may hold more than ours (qh3 sizes its packets up): a datagram
        # too large to echo is dropped, as an application would.
        with contextlib.suppress(DatagramTooLarge):
            self.send_datagram(data)

    async def on_draining(self) -> None:
        self.drains[self.ctx.request.header("x-case") or ""] += 1

    async def on_stop(self) -> None:
        future = self.stops.get(self.ctx.request.header("x-case") or "")
        if future is not None and not future.done():
            future.set_result(self.close_info)


# --- generated capsule streams ------------------------------------------------------------

varints = st.one_of(
    st.integers(0, 63),
    st.integers(0, 2**14 - 1),
    st.integers(0, 2**30 - 1),
    st.integers(0, 2**62 - 1),
)
_reasons = st.one_of(
    st.text(max_size=40).map(str.encode),
    st.binary(max_size=40),
    st.just("é".encode() * 600),  # 1200 bytes of UTF-8: over the 1024-byte limit
    st.just(b"r" * 1024),
)
capsule_items = st.one_of(
    st.tuples(st.just(CLOSE), st.integers(0, 2**32 - 1), _reasons).map(
        lambda t: _capsule(t[0], t[1].to_bytes(4, "big") + t[2])
    ),
    st.binary(max_size=3).map(lambda v: _capsule(CLOSE, v)),  # shorter than its code
    st.binary(max_size=4).map(lambda v: _capsule(DRAIN, v)),
    st.tuples(varints, st.binary(max_size=40)).map(lambda t: _capsule(*t)),
    st.tuples(varints, st.integers(MAX_CAPSULE + 1, 2**62 - 1)).map(
        lambda t: encode_uint_var(t[0]) + encode_uint_var(t[1])
    ),
    st.binary(min_size=1, max_size=12),  # raw garbage
)


def _capsule(capsule_type: int, value: bytes) -> bytes:
    return encode_uint_var(capsule_type) + encode_uint_var(len(value)) + value


@dataclass(frozen=True)
class CapsuleCase:
    pieces: tuple[bytes, ...]


capsule_cases = st.builds(
    lambda items, cuts: CapsuleCase(_cut(b"".join(items), cuts)),
    st.lists(capsule_items, min_size=1, max_size=6),
    st.lists(st.integers(0, 200), max_size=4),
)


def _cut(wire: bytes, cuts: list[int]) -> tuple[bytes, ...]:
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    return tuple(wire[a:b] for a, b in itertools.pairwise(points) if b > a)


# --- the reference parser -----------------------------------------------------------------


@dataclass
class Expected:
    drains: int = 0
    close: tuple[int, str] | None = None
    protocol_error: bool = False
    trailing: bool = False
    """Bytes follow the CLOSE capsule. The draft forbids that (the sender must end the
    stream after it), so a PROTOCOL_ERROR close is a fair answer too."""


def _varint(data: bytes, offset: int) -> tuple[int, int] | None:
    if offset >= len(data):
        return None
    size = 1 << (data[offset] >> 6)
    if offset + size > len(data):
        return None
    value = data[offset] & 0x3F
    for byte in data[offset + 1 : offset + size]:
        value = (value << 8) | byte
    return value, offset + size


def expect(wire: bytes) -> Expected:
    """Capsules are (varint type, varint length, value); see the module docstring."""
    expected = Expected()
    offset = 0
    while True:
        head = _varint(wire, offset)
        if head is None:
            return expected
        capsule_type, after_type = head
        length_field = _varint(wire, after_type)
        if length_field is None:
            return expected
        length, start = length_field
        if length > MAX_CAPSULE:
            expected.protocol_error = True
            return expected
        if len(wire) - start < length:
            return expected
        value = wire[start : start + length]
        offset = start + length
        if capsule_type == CLOSE:
            if len(value) < 4 or len(value) - 4 > 1024:
                expected.protocol_error = True
                return expected
            try:
                reason = value[4:].decode("utf-8")
            except UnicodeDecodeError:
                expected.protocol_error = True
                return expected
            expected.close = (int.from_bytes(value[:4], "big"), reason)
            expected.trailing = offset < len(wire)
            return expected
        if capsule_type == DRAIN:
            expected.drains += 1


# --- running one case ---------------------------------------------------------------------


async def run_capsule_case(
    server: Server, case: CapsuleCase, key: str, closing: list[WebTransportProtocol]
) -> None:
    session = await server.connect_in_memory("/watched", headers=[("x-case", key)])
    protocol = driver(session)
    closing.append(protocol)
    try:
        for piece in case.pieces:
            if session.closed:
                break
            protocol.connection.engine.send_data(session.session_id, piece, end_stream=False)
            protocol.transmit()
            await yield_to_loop()
        expected = expect(b"".join(case.pieces))
        if expected.protocol_error:
            info = await session.wait_closed()
            assert info.code == CloseCode.PROTOCOL_ERROR, info
            COUNTS["protocol error"] += 1
        elif expected.close is not None:
            seen = await Watched.stops[key]
            assert seen is not None
            if expected.trailing and seen.code == CloseCode.PROTOCOL_ERROR:
                COUNTS["bytes after close: protocol error"] += 1
                return
            assert (seen.code, seen.reason, seen.by_peer) == (*expected.close, True)
            info = await session.wait_closed()  # the server's FIN answers the capsule
            assert info.by_peer
            COUNTS["closed by capsule"] += 1
        else:
            session.send_datagram(b"ping")
            assert await session.receive_datagram() == b"ping"
            # Drains were handled before the datagram's echo (one actor, in order).
            assert Watched.drains[key] == expected.drains
            COUNTS["still open"] += 1
    finally:
        session.close()
        protocol.close()
        Watched.stops.pop(key, None)
        Watched.drains.pop(key, None)


@pytest.mark.timeout(scaled(120, 3_600))
def test_random_capsules_on_the_connect_stream(certificate: SelfSignedCertificate) -> None:
    COUNTS.clear()
    with asyncio.Runner() as runner:
        with watching(runner.get_loop()) as watch:
            server = Server(certificate=certificate)
            server.route("/watched", Watched)
            bystander = runner.run(server.connect_in_memory("/watched"))
            protocols: list[WebTransportProtocol] = []
            numbers = iter(range(10**9))

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(case=capsule_cases)
            @example(case=CapsuleCase((_capsule(DRAIN, b""), _capsule(0x21, b"x"))))
            @example(case=CapsuleCase((_capsule(CLOSE, b"\x00\x00\x10\x01bye"),)))
            @example(case=CapsuleCase((_capsule(CLOSE, b"\x00\x00"),)))
            def fuzz(case: CapsuleCase) -> None:
                key = str(next(numbers))
                COUNTS["cases"] += 1
                runner.run(asyncio.wait_for(run_capsule_case(server, case, key, protocols), 5))
                runner.run(asyncio.wait_for(_echo(bystander), 5))

            try:
                fuzz()
            finally:
                runner.run(asyncio.wait_for(bystander.aclose(), 5))
                runner.run(connections_closed(protocols))
                runner.run(asyncio.wait_for(server.wait_idle(), 10))
                runner.run(asyncio.wait_for(server.shutdown(timeout=5), 10))
            print(f"capsule fuzz: {dict(COUNTS)}")
            for outcome in ("protocol error", "closed by capsule", "still open"):
                assert COUNTS[outcome] > 0, (outcome, COUNTS)
        watch.check(allowed=["peer error"])


async def _echo(session: Session) -> None:
    session.send_datagram(b"bystander")
    assert await session.receive_datagram() == b"bystander"


def test_decoding_many_small_capsules_takes_linear_time() -> None:
    # One CONNECT-stream delivery can be large: a peer that holds back the first packet of
    # a burst makes QUIC hand over everything after it at once when the gap is filled.
    small = b"\x21\x00" * 25_000
    large = small * 8

    def best_of_three(data: bytes) -> float:
        # The cyclic GC and a busy machine add noise unrelated to the algorithm.
        times = []
        gc.disable()
        try:
            for _ in range(3):
                started = time.perf_counter()
                CapsuleDecoder().feed(data)
                times.append(time.perf_counter() - started)
        finally:
            gc.enable()
        return min(times)

    small_seconds = best_of_three(small)
    large_seconds = best_of_three(large)
    # Linear: ~8x. Quadratic: ~64x. The bound leaves room for a noisy machine.
    assert large_seconds < 24 * max(small_seconds, 0.002), (small_seconds, large_seconds)


# --- stream headers and datagram prefixes -------------------------------------------------

_signal = st.sampled_from([b"\x40\x41", b"\x41", b"\x54", b"\x40\x54", b"\x00", b"\x01", b"\x02"])
stream_openings = st.one_of(
    # A WebTransport bidi stream (signal 0x41) or uni stream (type 0x54) naming any
    # session id (ours, another's, none), then payload.
    st.tuples(
        st.sampled_from(["bidi", "uni"]),
        st.sampled_from([b"\x40\x41", b"\x40\x54"]),
        st.one_of(st.just(None), varints),
        st.binary(max_size=32),
    ),
    # Anything at all as the first bytes of a new stream.
    st.tuples(st.sampled_from(["bidi", "uni"]), _signal, st.just(-1), st.binary(max_size=32)),
)
_H3_RULES = (
    "Only one control stream is allowed",
    "Only one QPACK",
    "Clients must not open push streams",
    "frame is not allowed",
    "Could not parse quarter stream ID",
    "Frame is truncated",
    "Invalid frame type",
    "Closing control stream",
    "settings",
    # QPACK errors (a HEADERS frame of random bytes) come without a reason phrase.
    "connection closed (0x200)",
    "connection closed (0x201)",
    "connection closed (0x202)",
    # qh3's wording of the same rules.
    "Encoded field section exceeds the configured limit",
    "QPACK-blocked stream buffer limit exceeded",
    "Could not parse flow ID",
    "Critical stream",
    "truncated by stream end",
    "Setting identifier",
    "control stream",
)
datagram_prefixes = st.tuples(st.one_of(st.just(None), varints), st.binary(max_size=24))


@dataclass(frozen=True)
class HeaderCase:
    streams: tuple[tuple[Any, ...], ...]
    datagrams: tuple[tuple[Any, ...], ...]


header_cases = st.builds(
    HeaderCase,
    st.lists(stream_openings, max_size=4).map(tuple),
    st.lists(datagram_prefixes, max_size=4).map(tuple),
)


async def run_header_case(server: Server, case: HeaderCase) -> str:
    session = await server.connect_in_memory("/watched", headers=[("x-case", "headers")])
    protocol = driver(session)
    quic = protocol.connection.engine._quic  # type: ignore[attr-defined]
    try:
        for kind, signal, target, payload in case.streams:
            stream_id = quic.get_next_available_stream_id(is_unidirectional=kind == "uni")
            if target == -1:
                head = signal
            else:
                session_id = session.session_id if target is None else target
                head = signal + encode_uint_var(session_id % 2**62)
            quic.send_stream_data(stream_id, head + payload, end_stream=False)
        for target, payload in case.datagrams:
            quarter = session.session_id // 4 if target is None else target
            quic.send_datagram_frame(encode_uint_var(quarter % 2**62) + payload)
        protocol.transmit()
        await yield_to_loop()
        # The connection survives (the session still echoes), or aioquic's HTTP/3 layer
        # closed it with an HTTP/3 error, or the handler closed the session over what a
        # stream of its own carried: each a clean verdict, not a crash.
        try:
            session.send_datagram(b"after")
            async with asyncio.timeout(2):
                while (data := await session.receive_datagram()) != b"after":
                    assert isinstance(data, bytes)
        except SessionClosedError:
            info = session.close_info
            assert info is not None
            if info.code == CloseCode.ABORTED:
                return f"connection closed: {info.reason}"
            # Payload on a real stream of this session: the handler's framing verdict.
            assert info.code in (CloseCode.MALFORMED_MESSAGE, CloseCode.MESSAGE_TOO_LARGE), info
            return "session closed by its handler"
        return "survived"
    finally:
        session.close()
        protocol.close()


@pytest.mark.timeout(scaled(120, 3_600))
def test_random_stream_headers_and_datagram_prefixes(certificate: SelfSignedCertificate) -> None:
    outcomes: Counter[str] = Counter()
    with asyncio.Runner() as runner:
        with watching(runner.get_loop()) as watch:
            server = Server(certificate=certificate)
            server.route("/watched", Watched)
            bystander = runner.run(server.connect_in_memory("/watched"))

            @settings(
                max_examples=STREAM_HEADER_EXAMPLES,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(case=header_cases)
            def fuzz(case: HeaderCase) -> None:
                outcomes[runner.run(asyncio.wait_for(run_header_case(server, case), 10))] += 1
                runner.run(asyncio.wait_for(_echo(bystander), 5))

            try:
                fuzz()
            finally:
                runner.run(asyncio.wait_for(bystander.aclose(), 5))
                runner.run(asyncio.wait_for(server.shutdown(timeout=5), 10))
            print(f"stream header fuzz: {dict(outcomes)}")
            # Only HTTP/3's own rules (enforced by aioquic) may close the connection.
            for outcome in outcomes:
                if outcome.startswith("connection closed"):
                    assert any(rule in outcome for rule in _H3_RULES), outcome
            assert outcomes["survived"] > 0, outcomes
        watch.check(allowed=["peer error"])
