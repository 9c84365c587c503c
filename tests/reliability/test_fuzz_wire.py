"""Fuzzing the wire: random and truncated length-prefixed msgpack frames and datagrams
against a handler.

Property, for every generated case (one fresh session each): the session either
delivers every message the input contains (each echoed back, in order, then the stream
ends if the client ended it, and the session still answers) or, at the first bad frame
or datagram, is closed with exactly the typed close code of that input
(`MALFORMED_MESSAGE` for undecodable or truncated msgpack, `MESSAGE_TOO_LARGE` for a frame
announcing or a datagram carrying more than `max_message_size`), after echoing a prefix
of the good messages before it. Nothing escapes: no error or "unhandled" log line, no
error reported to the event loop, no task or actor left behind. A bystander session on
another connection answers after every case.

The expected outcome comes from a reference model (`expect_stream`), written from the
framing rules, not from the decoder under test. Most cases run through
`Server.connect_in_memory` (the real protocol stack minus the socket), one variant over
real UDP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiowt import Server
from aiowt.actors import Handler
from aiowt.transport import (
    CloseCode,
    PeerError,
    Session,
    SessionClosedError,
    Stream,
    StreamClosedError,
    connect,
)
from aiowt.transport._protocol import WebTransportProtocol
from aiowt.transport.framing import FrameDecoder, decode_message, encode_message
from aiowt.transport.tls import SelfSignedCertificate
from tests.conftest import bounded
from tests.reliability.support import (
    actor_tasks,
    connections_closed,
    driver,
    scaled,
    watching,
    yield_to_loop,
)

MAX = 256
"""The server's `max_message_size` here: small, so that the limit is hit often."""

IN_MEMORY_EXAMPLES = scaled(300, 10_000)
REAL_SOCKET_EXAMPLES = scaled(40, 1_000)
CASE_TIMEOUT = 5.0
"""Seconds for one case; each takes milliseconds."""

COUNTS: dict[str, Counter[str]] = {}
"""Per test: cases run, pieces of input sent, and each outcome (see docs/reliability.md)."""
_current: Counter[str] = Counter()


class Reflect(Handler):
    """Echoes every decoded message: a datagram as a datagram, a stream frame as a frame
    on the same stream (re-encoded with no size limit: a msgpack float32 comes back as a
    float64, a few bytes longer), and finishes a stream the peer finished."""

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        body = encode_message(message)
        if stream is None:
            self.send_datagram(body)
        else:
            stream.write(len(body).to_bytes(4, "big") + body)

    async def on_stream_end(self, stream: Stream) -> None:
        stream.finish()


# --- generated input ----------------------------------------------------------------------


def prefixed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=24)
    | st.binary(max_size=24)
)
values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
# Hand-picked msgpack bodies decoders get wrong: keys that cannot be hashed, bad UTF-8,
# malformed timestamps, reserved bytes, lengths far beyond the data, empty input, deep
# nesting, extension types (including the compression middleware's), huge integers.
HOSTILE_BODIES = [
    b"\x81\x91\x01\x02",
    b"\x81\x80\x01",
    b"\xa2\xff\xfe",
    b"\xd4\xff\x00",
    b"\xd6\xff\x00\x00\x00\x01",
    b"\xc1",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff\x01",
    b"\xdb\xff\xff\xff\xffab",
    b"",
    b"\x91" * 250 + b"\xc0",
    b"\xc7\x00\x05",
    b"\xd5\x47\x1f\x8b",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\xca\x7f\xc0\x00\x00",
    b"\x92\xc0",
    b"\xc0\xc0",
]
bodies = st.one_of(
    values.map(encode_message),
    values.map(encode_message),
    st.binary(max_size=48),
    st.tuples(values, st.binary(min_size=1, max_size=6)).map(lambda p: encode_message(p[0]) + p[1]),
    st.binary(min_size=MAX - 8, max_size=MAX + 8).map(encode_message),
    st.sampled_from(HOSTILE_BODIES),
)
frames = st.one_of(
    bodies.map(prefixed),
    bodies.map(prefixed),
    bodies.map(prefixed),
    st.integers(MAX + 1, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
    st.binary(min_size=1, max_size=16),
    bodies.map(prefixed).flatmap(lambda f: st.integers(0, len(f)).map(lambda cut: f[:cut])),
)


@dataclass(frozen=True)
class StreamInput:
    chunks: tuple[bytes, ...]
    fin: bool

    @property
    def wire(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class Case:
    streams: tuple[StreamInput, ...] = ()
    datagrams: tuple[bytes, ...] = ()
    yields: bool = False
    """Yield to the loop between writes, so the server sees the input in more pieces."""


def _chunked(wire: bytes, cuts: list[int]) -> tuple[bytes, ...]:
    points = sorted({min(cut, len(wire)) for cut in cuts} | {0, len(wire)})
    return tuple(wire[a:b] for a, b in itertools.pairwise(points) if b > a) or (b"",)


valid_frames = values.map(lambda v: prefixed(encode_message(v)))
stream_inputs = st.builds(
    lambda parts, cuts, fin: StreamInput(_chunked(b"".join(parts), cuts), fin),
    st.lists(valid_frames, min_size=1, max_size=8) | st.lists(frames, min_size=1, max_size=8),
    st.lists(st.integers(0, 4 * MAX), max_size=6),
    st.booleans(),
)
datagram_bodies = st.one_of(bodies, bodies.map(prefixed), st.binary(min_size=MAX + 1, max_size=600))
cases = st.one_of(
    st.builds(
        Case,
        streams=st.lists(stream_inputs, min_size=1, max_size=2).map(tuple),
        yields=st.booleans(),
    ),
    st.builds(
        Case,
        datagrams=(
            st.lists(values.map(encode_message), min_size=1, max_size=8)
            | st.lists(datagram_bodies, min_size=1, max_size=8)
        ).map(tuple),
        yields=st.booleans(),
    ),
)


_GOOD_FRAME = prefixed(encode_message({"ok": [1, 2.5, "three"]}))
"""The explicit examples (run before the generated ones) reach every outcome."""


# --- the reference model ------------------------------------------------------------------


@dataclass
class Expected:
    echoes: list[bytes] = field(default_factory=list)
    """The msgpack encoding of each message the server must decode, in order."""
    error: int | None = None
    """The close code of the first bad input, if there is one."""


def _decoded(body: bytes) -> bytes | int:
    """The canonical encoding of the one msgpack object in `body`, or the close code."""
    if len(body) > MAX:
        return CloseCode.MESSAGE_TOO_LARGE
    try:
        return encode_message(decode_message(body, max_size=MAX))
    except PeerError as error:
        return int(error.code)


def expect_stream(wire: bytes, fin: bool) -> Expected:
    """Frames: 4-byte big-endian length, then that many bytes of one msgpack object."""
    expected = Expected()
    offset = 0
    while len(wire) - offset >= 4:
        length = int.from_bytes(wire[offset : offset + 4], "big")
        if length > MAX:
            expected.error = CloseCode.MESSAGE_TOO_LARGE  # known before the body arrives
            return expected
        if len(wire) < offset + 4 + length:
            break
        result = _decoded(wire[offset + 4 : offset + 4 + length])
        if isinstance(result, int):
            expected.error = result
            return expected
        expected.echoes.append(result)
        offset += 4 + length
    if fin and offset < len(wire):
        expected.error = CloseCode.MALFORMED_MESSAGE  # the stream ended inside a frame
    return expected


def expect_datagrams(datagrams: tuple[bytes, ...]) -> Expected:
    expected = Expected()
    for body in datagrams:
        result = _decoded(body)
        if isinstance(result, int):
            expected.error = result
            break
        expected.echoes.append(result)
    return expected


# --- running one case ---------------------------------------------------------------------


async def _stream_echoes(stream: Stream, count: int | None) -> tuple[list[bytes], bool]:
    """Frames echoed on `stream`: `count` of them, or (None) all until it ends or is reset.

    Returns them and whether the stream ended cleanly (a reset, or the session's end
    before the stream's, is not clean).
    """
    decoder = FrameDecoder(max_size=16 * MAX)
    echoes: list[bytes] = []
    while count is None or len(echoes) < count:
        try:
            chunk = await stream.read()
        except (StreamClosedError, SessionClosedError):
            return echoes, False
        if not chunk:
            return echoes, True
        echoes += [encode_message(m) for m in decoder.feed(chunk)]
    return echoes, False


async def _datagram_echoes(session: Session, count: int | None) -> list[bytes]:
    echoes: list[bytes] = []
    while count is None or len(echoes) < count:
        try:
            echoes.append(await session.receive_datagram())
        except SessionClosedError:
            break
    return echoes


async def _still_answers(session: Session) -> None:
    assert not session.closed, session.close_info
    session.send_datagram(encode_message("ping"))
    assert decode_message(await session.receive_datagram()) == "ping"


def _outcome(kind: str) -> None:
    _current[kind] += 1


async def run_case(session: Session, case: Case) -> None:
    if case.streams:
        await _run_streams(session, case)
    else:
        await _run_datagrams(session, case)


async def _run_streams(session: Session, case: Case) -> None:
    streams = [session.open_stream() for _ in case.streams]
    rounds = max(len(s.chunks) for s in case.streams)
    for index in range(rounds):
        if session.closed:
            break  # the server refused something already: the rest cannot be sent
        for stream, spec in zip(streams, case.streams, strict=True):
            if index < len(spec.chunks):
                last = index == len(spec.chunks) - 1
                stream.write(spec.chunks[index], end_stream=spec.fin and last)
        if case.yields:
            await yield_to_loop()
    expected = [expect_stream(spec.wire, spec.fin) for spec in case.streams]
    errors = {e.error for e in expected if e.error is not None}
    if errors:
        info = await session.wait_closed()
        assert info.code in errors, (hex(info.code), info.reason, errors)
        _outcome(f"stream closed {CloseCode(info.code).name}")
        for stream, exp in zip(streams, expected, strict=True):
            got, _ = await _stream_echoes(stream, None)  # what arrived; then it ends
            assert got == exp.echoes[: len(got)], "echoes are not a prefix of the input's messages"
        return
    for stream, spec, exp in zip(streams, case.streams, expected, strict=True):
        got, _ = await _stream_echoes(stream, len(exp.echoes))
        assert got == exp.echoes
        if spec.fin:
            rest, ended = await _stream_echoes(stream, None)
            assert (rest, ended) == ([], True), "the server must finish the stream after the echoes"
    await _still_answers(session)
    _outcome("stream delivered")


async def _run_datagrams(session: Session, case: Case) -> None:
    for body in case.datagrams:
        if session.closed:
            break
        session.send_datagram(body)
        if case.yields:
            await yield_to_loop()
    expected = expect_datagrams(case.datagrams)
    if expected.error is not None:
        info = await session.wait_closed()
        assert info.code == expected.error, (hex(info.code), info.reason)
        got = await _datagram_echoes(session, None)
        assert got == expected.echoes[: len(got)]
        _outcome(f"datagram closed {CloseCode(info.code).name}")
        return
    assert await _datagram_echoes(session, len(expected.echoes)) == expected.echoes
    await _still_answers(session)
    _outcome("datagram delivered")


async def _other_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


# --- the tests ----------------------------------------------------------------------------

_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _fuzz(certificate: SelfSignedCertificate, examples: int, *, real_socket: bool) -> None:
    name = "real_socket" if real_socket else "in_memory"
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        with watching(loop) as watch:
            server = Server(host="127.0.0.1", port=0, certificate=certificate, max_message_size=MAX)
            server.route("/reflect", Reflect)
            if real_socket:
                runner.run(server.start())

            async def open_session() -> Session:
                if not real_socket:
                    return await server.connect_in_memory("/reflect")
                host, port = server.address
                return await connect(
                    f"https://{host}:{port}/reflect",
                    cert_hash=certificate.sha256,
                    session_options={"max_message_size": MAX},
                )

            closing: list[WebTransportProtocol] = []

            async def one_case(case: Case) -> None:
                async with asyncio.timeout(CASE_TIMEOUT):
                    session = await open_session()
                    try:
                        await run_case(session, case)
                    finally:
                        if real_socket:
                            await session.aclose()
                        else:
                            # In memory, waiting out each connection's closing period
                            # (3 PTO, ~0.1 s) would dominate; close it and check below
                            # that every one of them has terminated.
                            session.close()
                            driver(session).close()
                            closing.append(driver(session))
                    await _still_answers(bystander)

            bystander = runner.run(open_session())
            actors_before = actor_tasks()
            counts = COUNTS[name] = _current
            counts.clear()

            @settings(max_examples=examples, **_SETTINGS)
            @given(case=cases)
            @example(case=Case(streams=(StreamInput((_GOOD_FRAME * 3,), True),)))
            @example(
                case=Case(streams=(StreamInput((_GOOD_FRAME, b"\x00\x00\x00\x01\xc1"), False),))
            )
            @example(case=Case(streams=(StreamInput(((4 * MAX).to_bytes(4, "big"),), False),)))
            @example(case=Case(datagrams=(encode_message("a"), encode_message([1, 2]))))
            @example(case=Case(datagrams=(encode_message("a"), b"\xc1")))
            @example(case=Case(datagrams=(encode_message(b"x" * MAX),)))
            def fuzz(case: Case) -> None:
                counts["cases"] += 1
                counts["pieces"] += len(case.datagrams) + sum(len(s.chunks) for s in case.streams)
                runner.run(one_case(case))

            try:
                fuzz()
                runner.run(_still_answers(bystander))
                runner.run(connections_closed(closing))
            finally:
                runner.run(asyncio.wait_for(bystander.aclose(), 5))
                runner.run(asyncio.wait_for(server.wait_idle(), 10))
                runner.run(asyncio.wait_for(server.shutdown(timeout=5), 10))
            assert server.live_sessions == 0
            # The generator reaches every verdict (not a fuzzer stuck on one kind of input).
            for outcome in (
                "stream delivered",
                "stream closed MALFORMED_MESSAGE",
                "datagram delivered",
                "datagram closed MALFORMED_MESSAGE",
                *([] if real_socket else ["stream closed MESSAGE_TOO_LARGE"]),
                *([] if real_socket else ["datagram closed MESSAGE_TOO_LARGE"]),
            ):
                assert counts[outcome] > 0, (outcome, counts)
            print(f"wire fuzz {name}: {dict(counts)}")
            assert actor_tasks() <= actors_before - 1  # the bystander's actor is gone too
            assert runner.run(_other_tasks()) == []
        watch.check(allowed=["peer error"])


@pytest.mark.timeout(scaled(120, 3_600))
def test_random_frames_and_datagrams_in_memory(certificate: SelfSignedCertificate) -> None:
    _fuzz(certificate, IN_MEMORY_EXAMPLES, real_socket=False)


@pytest.mark.timeout(scaled(120, 3_600))
def test_random_frames_and_datagrams_over_udp(certificate: SelfSignedCertificate) -> None:
    _fuzz(certificate, REAL_SOCKET_EXAMPLES, real_socket=True)


# --- regressions the fuzzer found -----------------------------------------------------------


class Closer(Handler):
    async def on_message(self, message: Any, stream: Stream | None) -> None:
        self.close(1234, "bye")


async def test_a_reader_waiting_on_a_stream_wakes_when_the_session_closes() -> None:
    server = Server()
    server.route("/close", Closer)
    session = await server.connect_in_memory("/close")
    try:
        stream = session.open_stream()
        reading = asyncio.ensure_future(stream.read())
        await yield_to_loop()
        stream.send_message("close, please")
        async with bounded(5):
            assert (await session.wait_closed()).code == 1234
            # The read ends, and not as if the stream had ended cleanly.
            with pytest.raises(SessionClosedError):
                await reading
    finally:
        reading.cancel()
        await session.aclose()
        await server.shutdown()


class Recording(Reflect):
    seen: ClassVar[asyncio.Queue[Any]]
    stopped: ClassVar[asyncio.Queue[str]]

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        self.seen.put_nowait(message)
        await super().on_message(message, stream)

    async def on_stop(self) -> None:
        self.stopped.put_nowait(self.ctx.path)


async def test_late_data_on_an_aborted_stream_leaves_the_connection_alone() -> None:
    """Found by the fuzzer (fixed in 7409ad1): bytes still in flight on a stream the
    server aborted were parsed by aioquic's HTTP/3 layer as a new request stream, which
    closed the whole connection, every other session on it included."""
    Recording.seen, Recording.stopped = asyncio.Queue(), asyncio.Queue()
    server = Server(max_message_size=MAX)
    server.route("/a", Recording)
    server.route("/b", Recording)
    first = await server.connect_in_memory("/a")
    client = driver(first)
    # A second session on the same QUIC connection, as browsers pool them.
    second = await client.open_session("localhost", "/b", [], "webtransport")
    to_server = client._transport
    server_side = to_server.peer.protocol  # type: ignore[union-attr]
    engine = client.connection.engine
    try:
        async with bounded(10):
            # Hold everything the server sends, so the client cannot learn of the abort
            # (like a packet still in flight toward it).
            server_side._transport.peer = None  # type: ignore[union-attr]
            raw = engine.open_wt_stream(first.session_id, unidirectional=False)
            engine.send_stream_data(raw, b"\x00\x00\x00\x00", False)  # an empty frame: malformed
            client.transmit()
            assert await Recording.stopped.get() == "/a"  # the server closed /a, aborted `raw`
            # The peer's next bytes on `raw` were already on their way.
            engine.send_stream_data(raw, b"\x00\x00\x00\x01\xc0", False)
            second.send_datagram(encode_message("after"))
            client.transmit()
            assert await Recording.seen.get() == "after"
            assert not server_side.is_closed
            server_side._transport.peer = to_server  # type: ignore[union-attr]
            second.send_datagram(encode_message("still there?"))
            # The echo of "after" may have been sent while the path was held (and lost).
            while (reply := decode_message(await second.receive_datagram())) != "still there?":
                assert reply == "after"
    finally:
        server_side._transport.peer = to_server  # type: ignore[union-attr]
        await first.aclose()
        await server.shutdown()


async def test_good_frames_before_a_bad_one_in_the_same_chunk_are_delivered() -> None:
    Recording.seen, Recording.stopped = asyncio.Queue(), asyncio.Queue()
    server = Server(max_message_size=MAX)
    server.route("/r", Recording)
    session = await server.connect_in_memory("/r")
    try:
        stream = session.open_stream()
        # One write, one QUIC delivery: what the handler sees must not depend on how
        # the bytes were cut into packets.
        stream.write(prefixed(encode_message("one")) + prefixed(b""))
        async with bounded(5):
            assert (await session.wait_closed()).code == CloseCode.MALFORMED_MESSAGE
            assert await Recording.stopped.get() == "/r"
        assert Recording.seen.qsize() == 1
        assert Recording.seen.get_nowait() == "one"
    finally:
        await session.aclose()
        await server.shutdown()


class Gated(Reflect):
    """Reflect, but the message "wait" holds the actor until `gate` opens."""

    gate: ClassVar[asyncio.Event]
    waiting: ClassVar[asyncio.Event]
    stopped: ClassVar[asyncio.Event]
    seen: ClassVar[list[Any]]

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        self.seen.append(message)
        if message == "wait":
            self.waiting.set()
            await self.gate.wait()
            return
        await super().on_message(message, stream)

    async def on_stop(self) -> None:
        self.stopped.set()


async def test_bytes_inside_a_refused_frame_never_reach_the_handler() -> None:
    Gated.gate, Gated.waiting, Gated.stopped = asyncio.Event(), asyncio.Event(), asyncio.Event()
    Gated.seen = []
    server = Server(max_message_size=MAX)
    server.route("/g", Gated)
    session = await server.connect_in_memory("/g")
    with watching() as watch:
        try:
            stream = session.open_stream()
            stream.send_message("wait")
            async with bounded(5):
                await Gated.waiting.wait()  # the actor is busy: what follows queues up
                # Two deliveries: a header announcing more than the limit (refused as
                # soon as it is read), then bytes of that frame's body which happen to
                # look like a frame of their own.
                for piece in ((4 * MAX).to_bytes(4, "big"), prefixed(encode_message("smuggled"))):
                    stream.write(piece)
                    await yield_to_loop()
                    await yield_to_loop()
                Gated.gate.set()
                assert (await session.wait_closed()).code == CloseCode.MESSAGE_TOO_LARGE
                await Gated.stopped.wait()
        finally:
            await session.aclose()
            await server.shutdown()
    watch.check(allowed=["peer error"])
    # What was inside the refused frame is not a message: it must not be decoded as one.
    assert Gated.seen == ["wait"]
