"""One event vocabulary: taps see every event first, the sink gets the same objects.

Transport only (no server, no actors): an in-memory QUIC connection whose CONNECT is
accepted by hand, with a recording tap and a list as the session's sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from aiowt.transport import Session, SessionTap, StreamClosedError, StreamErrorCode, UsageError
from aiowt.transport.endpoint import IncomingSession
from aiowt.transport.engine import QuicOptions
from aiowt.transport.events import (
    DatagramReceived,
    DatagramSent,
    InboundEvent,
    SessionAccepted,
    SessionClosed,
    SessionEvent,
    StreamClosed,
    StreamDataReceived,
    StreamDataSent,
    StreamOpened,
)
from aiowt.transport.memory import connect_in_memory
from aiowt.transport.tls import SelfSignedCertificate
from tests.conftest import bounded

Veto = Callable[[SessionEvent], bool]


class Recorder(SessionTap):
    def __init__(self, veto: Veto = lambda event: False) -> None:
        self.seen: list[SessionEvent] = []
        self._veto = veto

    def observe(self, session: Session, event: SessionEvent) -> bool:
        self.seen.append(event)
        return not self._veto(event)


class Sink:
    """A session's sink that lets the test wait for a kind of event."""

    def __init__(self) -> None:
        self.events: list[InboundEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: InboundEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, kind: type[Any]) -> Any:
        async with bounded():
            while True:
                for event in self.events:
                    if isinstance(event, kind):
                        return event
                self._changed.clear()
                await self._changed.wait()


class Pair:
    """A client session and the server session it reached, with the server's tap and sink."""

    def __init__(self, client: Session, server: Session, tap: Recorder, sink: Sink) -> None:
        self.client, self.server, self.tap, self.sink = client, server, tap, sink


@pytest.fixture
async def pair(
    certificate: SelfSignedCertificate, request: pytest.FixtureRequest
) -> AsyncIterator[Pair]:
    veto: Veto = getattr(request, "param", lambda event: False)
    options = QuicOptions(
        is_client=False, cert_pem=certificate.cert_pem, key_pem=certificate.key_pem
    )
    accepted: asyncio.Queue[tuple[Session, Recorder, Sink]] = asyncio.Queue()

    def on_request(incoming: IncomingSession) -> None:
        session = incoming.accept()
        tap, sink = Recorder(veto), Sink()
        session.install_taps([tap])
        session.attach(sink)
        accepted.put_nowait((session, tap, sink))

    client = await connect_in_memory(options, on_request, "/events")
    async with bounded():
        server, tap, sink = await accepted.get()
    yield Pair(client, server, tap, sink)
    await client.aclose()


async def test_taps_see_every_event_first_and_the_sink_gets_the_same_objects(pair: Pair) -> None:
    pair.client.send_datagram(b"ping")
    stream = pair.client.open_stream()
    stream.write(b"hello", end_stream=True)
    await pair.sink.wait_for(DatagramReceived)
    data = await pair.sink.wait_for(StreamDataReceived)
    pair.server.send_datagram(b"pong")
    echo = data.stream
    echo.write(b"HELLO", end_stream=True)
    async with bounded():
        assert await pair.client.receive_datagram() == b"pong"
        assert await stream.read_all() == b"HELLO"
    await pair.client.aclose()
    closed = await pair.sink.wait_for(SessionClosed)

    seen = pair.tap.seen
    assert isinstance(seen[0], SessionAccepted)
    kinds = {type(event) for event in seen}
    assert {DatagramReceived, StreamOpened, StreamDataReceived, DatagramSent} <= kinds
    assert {StreamDataSent, StreamClosed, SessionClosed} <= kinds
    # The inbound events the sink got are the very objects the tap saw, in order.
    inbound = [e for e in seen if not isinstance(e, SessionAccepted | DatagramSent)]
    inbound = [e for e in inbound if not isinstance(e, StreamDataSent | StreamClosed)]
    assert [id(e) for e in inbound] == [id(e) for e in pair.sink.events]
    assert closed.info.by_peer


@pytest.mark.parametrize(
    "pair", [lambda event: isinstance(event, DatagramReceived | StreamOpened)], indirect=True
)
async def test_a_tap_vetoes_inbound_datagrams_and_streams(pair: Pair) -> None:
    pair.client.send_datagram(b"dropped")
    stream = pair.client.open_stream()
    stream.write(b"refused")
    async with bounded():
        with pytest.raises(StreamClosedError) as refused:
            await stream.read()
    assert refused.value.code == StreamErrorCode.REFUSED
    assert any(isinstance(event, DatagramReceived) for event in pair.tap.seen)
    assert not any(isinstance(event, DatagramReceived | StreamOpened) for event in pair.sink.events)


async def test_taps_are_installed_once(pair: Pair) -> None:
    with pytest.raises(UsageError, match="already installed"):
        pair.server.install_taps([Recorder()])
    assert [type(event) for event in pair.tap.seen][:1] == [SessionAccepted]
