"""Fuzzing the WebSocket framing over real TCP: random frames, garbage, text, resets.

Property, for every generated case (one fresh socket each, raw WebSocket messages from
the `websockets` library, so nothing of aiowt's client stands between the fuzzer and the
server): the session either stays open and keeps answering, or is closed with exactly
the code a reference model (`expect`, written from docs/websocket.md, not from the mux)
gives for the first broken rule: `PROTOCOL_ERROR` for a short frame, an unknown type, a
code of the wrong size, data on the server's own unidirectional stream, a datagram over
16 KiB, a text message; `MESSAGE_TOO_LARGE` for a WebSocket message over the frame limit.
A case may also end with the socket cut (no close at all): the session ends `ABORTED`.

Nothing escapes: no error or "unhandled" log line, no loop error, no session left
behind; a bystander session on another socket answers after every case.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as raw_connect

from aiowt import Server
from aiowt.transport import CloseCode, CloseInfo, Session, connect
from aiowt.transport.mux import MAX_CHUNK, MAX_DATAGRAM, MAX_FRAME, FrameType, encode_frame
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.reliability.support import scaled, watching

EXAMPLES = scaled(200, 5_000)
CASE_TIMEOUT = 10.0

# --- the input ----------------------------------------------------------------------------

Message = bytes | str
"""One WebSocket message: binary (a frame, or garbage) or text."""

client_stream_ids = st.sampled_from([0, 2, 4, 6, 8])
"""Streams the client may open (bidirectional 0, 4, 8; unidirectional 2, 6)."""
code = st.integers(0, 2**32 - 1).map(lambda c: c.to_bytes(4, "big"))

valid_frames = st.one_of(
    st.builds(
        encode_frame,
        st.sampled_from([FrameType.STREAM, FrameType.STREAM_FIN]),
        client_stream_ids,
        st.binary(max_size=64),
    ),
    st.builds(encode_frame, st.just(FrameType.DATAGRAM), st.just(0), st.binary(max_size=64)),
    st.builds(encode_frame, st.just(FrameType.CREDIT), st.integers(0, 9), code),
    st.builds(encode_frame, st.just(FrameType.RESET), client_stream_ids, code),
    st.builds(encode_frame, st.just(FrameType.STOP), st.integers(0, 9), code),
    st.just(encode_frame(FrameType.DRAIN)),
)
broken_frames = st.one_of(
    st.binary(max_size=4),  # shorter than a header
    st.builds(encode_frame, st.integers(0x09, 0xFF) | st.just(0), st.integers(0, 9)),
    st.builds(
        encode_frame,
        st.sampled_from([FrameType.RESET, FrameType.STOP, FrameType.CREDIT]),
        st.integers(0, 9),
        st.binary(max_size=8).filter(lambda b: len(b) != 4),
    ),
    st.builds(encode_frame, st.just(FrameType.STREAM), st.just(3), st.binary(max_size=8)),
    st.just(encode_frame(FrameType.DATAGRAM, 0, b"d" * (MAX_DATAGRAM + 1))),
    st.just(b"x" * (MAX_FRAME + 1)),
    st.text(max_size=8),
)


@dataclass(frozen=True)
class Case:
    messages: tuple[Message, ...]
    cut: bool
    """End by cutting the TCP connection (no close) instead of a normal close."""


cases = st.builds(
    Case,
    st.lists(st.one_of(valid_frames, valid_frames, broken_frames), max_size=12).map(tuple),
    st.booleans(),
)


def expect(messages: tuple[Message, ...]) -> int | None:
    """The close code the server must end the session with, or None (it stays open)."""
    server_uni = {3}  # the server opens stream 3 (unidirectional) before any case
    stop_3 = encode_frame(FrameType.STOP, 3)
    for message in messages:
        if isinstance(message, bytes) and message[:5] == stop_3 and len(message) == 9:
            server_uni.discard(3)  # answered with RESET and forgotten: later bytes dropped
        if isinstance(message, str):
            return CloseCode.PROTOCOL_ERROR
        if len(message) > MAX_FRAME:
            return CloseCode.MESSAGE_TOO_LARGE
        if len(message) < 5:
            return CloseCode.PROTOCOL_ERROR
        kind, ident, payload = message[0], int.from_bytes(message[1:5], "big"), message[5:]
        if not FrameType.STREAM <= kind <= FrameType.DRAIN:
            return CloseCode.PROTOCOL_ERROR
        if kind in (FrameType.RESET, FrameType.STOP, FrameType.CREDIT) and len(payload) != 4:
            return CloseCode.PROTOCOL_ERROR
        streamed = kind in (FrameType.STREAM, FrameType.STREAM_FIN)
        if streamed and (len(payload) > MAX_CHUNK or ident in server_uni):
            return CloseCode.PROTOCOL_ERROR
        if kind == FrameType.DATAGRAM and len(payload) > MAX_DATAGRAM:
            return CloseCode.PROTOCOL_ERROR
    return None


class OpensAStream(Echo):
    """The echo, plus one unidirectional stream of its own (id 3) the client must not
    send on."""

    async def on_start(self) -> None:
        await super().on_start()
        self.open_stream(unidirectional=True).write(b"hello")


# --- the run ------------------------------------------------------------------------------


@pytest.mark.timeout(scaled(120, 3_600))
def test_random_frames_over_websocket(certificate: SelfSignedCertificate) -> None:
    counts: Counter[str] = Counter()
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        with watching(loop) as watch:
            ends: asyncio.Queue[CloseInfo | None] = asyncio.Queue()
            server = Server(
                host="127.0.0.1",
                port=0,
                certificate=certificate,
                websocket=True,
                websocket_port=0,
                websocket_tls=False,
            )
            server.route("/echo", OpensAStream)
            server.on_disconnect.append(lambda ctx: ends.put_nowait(ctx.close_info))
            runner.run(server.start())
            host, port = server.websocket_address
            url = f"ws://{host}:{port}/echo"
            bystander: Session = runner.run(connect(url))

            async def still_answers() -> None:
                bystander.send_datagram(b"ping")
                assert await asyncio.wait_for(bystander.receive_datagram(), 5) == b"ping"

            async def one_case(case: Case) -> None:
                async with asyncio.timeout(CASE_TIMEOUT):
                    raw = await raw_connect(url, compression=None, max_size=None)
                    await raw.recv()  # the server's stream 3 exists before any frame
                    for message in case.messages:
                        try:
                            await raw.send(message)
                        except Exception:
                            break  # the server closed the socket: the verdict is in
                    expected = expect(case.messages)
                    if expected is None:
                        if case.cut:
                            raw.transport.abort()
                        else:
                            await raw.close()
                    info = await ends.get()
                    assert info is not None
                    if expected is not None:
                        assert (info.code, info.by_peer) == (expected, False), (case, info)
                        counts[f"closed {CloseCode(expected).name}"] += 1
                    elif case.cut:
                        assert info.code == CloseCode.ABORTED, (case, info)
                        counts["cut"] += 1
                    else:
                        assert info.by_peer, (case, info)
                        counts["open until the client closed"] += 1
                    raw.transport.abort()
                    await still_answers()

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(case=cases)
            @example(case=Case((encode_frame(FrameType.STREAM, 0, b"hi"),), cut=False))
            @example(case=Case((encode_frame(FrameType.STREAM, 3, b"no"),), cut=False))
            @example(case=Case(("text",), cut=False))
            @example(case=Case((b"x" * (MAX_FRAME + 1),), cut=False))
            @example(case=Case((encode_frame(FrameType.DATAGRAM, 0, b"d"),), cut=True))
            def fuzz(case: Case) -> None:
                runner.run(one_case(case))

            try:
                fuzz()
                runner.run(still_answers())
            finally:
                runner.run(asyncio.wait_for(bystander.aclose(), 5))
                runner.run(asyncio.wait_for(server.wait_idle(), 10))
                runner.run(asyncio.wait_for(server.shutdown(timeout=5), 10))
            assert server.live_sessions == 0
            for outcome in (
                "closed PROTOCOL_ERROR",
                "closed MESSAGE_TOO_LARGE",
                "cut",
                "open until the client closed",
            ):
                assert counts[outcome] > 0, (outcome, counts)
            print(f"websocket fuzz: {dict(counts)}")
        watch.check(allowed=["peer error"])
