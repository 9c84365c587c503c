"""The sans-I/O core (`WebTransportConnection`) driven with no socket, no loop, no sleep.

Two cores pass datagrams by hand and share a clock the test moves, on every pairing of
the two engines (the client's engine first in each id).
"""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from aiowt.transport import events
from aiowt.transport.codes import CloseCode
from aiowt.transport.connection import (
    ConnectionEvent,
    HandshakeCompleted,
    PeerSettingsReceived,
    SessionRequested,
    SessionResponse,
    Terminated,
    WebTransportConnection,
)
from aiowt.transport.engine import QuicOptions, get_engine
from aiowt.transport.errors import HandshakeError
from aiowt.transport.limits import ConnectionLimits
from aiowt.transport.session import Session
from aiowt.transport.tls import SelfSignedCertificate

pytest.importorskip("qh3")

PAIRS = [("aioquic", "aioquic"), ("qh3", "qh3"), ("aioquic", "qh3"), ("qh3", "aioquic")]
CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4433)
SHORT = 0.05
"""Timers this close are run by `exchange` itself: pacing and acknowledgement delays."""


class Wire:
    """A client core and the server core it reaches, joined by hand."""

    def __init__(
        self,
        client_engine: str,
        server_engine: str,
        certificate: SelfSignedCertificate,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.now = 1000.0
        self.limits = limits or ConnectionLimits()
        self.engine = get_engine(server_engine)
        self.config = self.engine.server_config(
            QuicOptions(
                is_client=False,
                cert_pem=certificate.cert_pem,
                key_pem=certificate.key_pem,
                max_sessions=self.limits.max_sessions_per_connection,
            )
        )
        quic = get_engine(client_engine).client(
            QuicOptions(is_client=True, server_name="localhost", verify=False)
        )
        self.client = WebTransportConnection(quic, is_client=True, now=self.now)
        self.server: WebTransportConnection | None = None
        self.client.connect(SERVER_ADDR, self.now)

    def exchange(self) -> None:
        """Move datagrams both ways until neither side has any to send, letting the clock
        run through the short timers on the way (pacing, delayed acknowledgements)."""
        for _ in range(1000):
            moved = False
            for data, _ in self.client.datagrams_to_send(self.now):
                moved = True
                server = self.server
                if server is None:
                    cid, may_start, _ = self.engine.route(data, self.config)
                    assert may_start
                    server = self.server = WebTransportConnection(
                        self.engine.server(self.config, cid),
                        is_client=False,
                        limits=self.limits,
                        now=self.now,
                    )
                server.receive_datagram(data, CLIENT_ADDR, self.now)
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(self.now):
                    moved = True
                    self.client.receive_datagram(data, SERVER_ADDR, self.now)
            if not moved and not self._short_timer_fired():
                return
        raise AssertionError("the two sides never went quiet")

    def _short_timer_fired(self) -> bool:
        sides = [side for side in (self.client, self.server) if side is not None]
        timers = [(timer, side) for side in sides if (timer := side.get_timer()) is not None]
        if not timers:
            return False
        timer, side = min(timers, key=lambda pair: pair[0])
        if timer > self.now + SHORT:
            return False
        self.now = max(self.now, timer)
        side.handle_timer(self.now)
        return True

    def advance(self, seconds: float) -> None:
        """Move the clock and fire every timer that is due, then exchange."""
        self.now += seconds
        for side in (self.client, self.server):
            timer = side.get_timer() if side is not None else None
            if side is not None and timer is not None and timer <= self.now:
                side.handle_timer(self.now)
        self.exchange()

    @property
    def served(self) -> WebTransportConnection:
        assert self.server is not None
        return self.server


def drain(
    connection: WebTransportConnection, kind: type[ConnectionEvent] = ConnectionEvent
) -> list[ConnectionEvent]:
    """The connection's events so far, those of `kind` only."""
    found = []
    while (event := connection.next_event()) is not None:
        if isinstance(event, kind):
            found.append(event)
    return found


def open_pair(wire: Wire, path: str = "/room") -> tuple[Session, Session, list[object]]:
    """A session accepted by the server; returns both ends and the server's sink."""
    wire.exchange()
    assert {type(e) for e in drain(wire.client)} >= {HandshakeCompleted, PeerSettingsReceived}
    stream_id = wire.client.request_session("localhost", path, [("x-who", "ada")], "webtransport")
    wire.exchange()
    (requested,) = drain(wire.served, SessionRequested)
    assert isinstance(requested, SessionRequested)
    assert requested.incoming.request.path == path
    assert ("x-who", "ada") in requested.incoming.request.headers
    assert requested.incoming.request.remote_addr == CLIENT_ADDR
    server_session = requested.incoming.accept()
    seen: list[object] = []
    server_session.attach(seen.append)
    wire.exchange()
    (response,) = drain(wire.client, SessionResponse)
    assert isinstance(response, SessionResponse)
    assert response.stream_id == stream_id
    assert isinstance(response.result, Session)
    return response.result, server_session, seen


@pytest.fixture(params=PAIRS, ids=["-".join(pair) for pair in PAIRS])
def wire(request: pytest.FixtureRequest, certificate: SelfSignedCertificate) -> Wire:
    client_engine, server_engine = request.param
    return Wire(client_engine, server_engine, certificate)


def test_streams_and_datagrams_both_ways(wire: Wire) -> None:
    client, server, seen = open_pair(wire)
    received: list[object] = []
    client.attach(received.append)

    client.send_datagram(b"ping")
    stream = client.open_stream()
    stream.write(b"hello", end_stream=True)
    wire.exchange()
    kinds = [type(event) for event in seen]
    assert kinds == [events.DatagramReceived, events.StreamOpened, events.StreamDataReceived]
    data = seen[2]
    assert isinstance(data, events.StreamDataReceived)
    assert (data.data, data.end_stream) == (b"hello", True)

    data.stream.write(b"HELLO", end_stream=True)
    server.send_datagram(b"pong")
    uni = server.open_stream(unidirectional=True)
    uni.write(b"news", end_stream=True)
    wire.exchange()
    got = {(type(e).__name__, getattr(e, "data", None)) for e in received}
    assert ("StreamDataReceived", b"HELLO") in got
    assert ("DatagramReceived", b"pong") in got
    assert ("StreamDataReceived", b"news") in got
    # Every stream ended both ways is forgotten on both sides: nothing leaks.
    assert wire.client._streams == {}
    assert wire.served._streams == {}


def test_a_close_capsule_carries_code_and_reason_and_is_answered(wire: Wire) -> None:
    client, server, seen = open_pair(wire)
    client.close(4001, "bye now")
    wire.exchange()
    closed = seen[-1]
    assert isinstance(closed, events.SessionClosed)
    assert (closed.info.code, closed.info.reason, closed.info.by_peer) == (4001, "bye now", True)
    assert server.closed
    assert client.closed
    assert wire.client.stream_delivered(client.session_id)


def test_a_refusal_reaches_the_client_with_status_and_reason(wire: Wire) -> None:
    wire.exchange()
    drain(wire.client)
    stream_id = wire.client.request_session("localhost", "/nowhere", [], "webtransport")
    wire.exchange()
    (requested,) = drain(wire.served, SessionRequested)
    assert isinstance(requested, SessionRequested)
    requested.incoming.reject(404, "no route\nhere", (("retry-after", "3"),))
    wire.exchange()
    (response,) = drain(wire.client, SessionResponse)
    assert isinstance(response, SessionResponse)
    assert response.stream_id == stream_id
    error = response.result
    assert isinstance(error, HandshakeError)
    assert (error.status, error.reason) == (404, "no route here")
    assert ("retry-after", "3") in error.headers


def test_a_malformed_connect_is_answered_before_any_verdict(wire: Wire) -> None:
    wire.exchange()
    drain(wire.client)
    wire.client.request_session("localhost", "/x", [], "websocket")
    wire.exchange()
    assert drain(wire.served, SessionRequested) == []  # never offered for a verdict
    (response,) = drain(wire.client, SessionResponse)
    assert isinstance(response, SessionResponse)
    assert isinstance(response.result, HandshakeError)
    assert response.result.status == 400
    assert "unsupported :protocol" in response.result.reason


def test_a_connection_with_no_session_closes_after_the_idle_timeout(wire: Wire) -> None:
    wire.exchange()
    drain(wire.client)
    idle = wire.limits.idle_timeout
    deadline = wire.served.get_timer()
    assert deadline is not None
    assert deadline <= wire.now + idle
    wire.advance(idle / 2)
    assert not wire.served.is_closed
    wire.advance(idle / 2)
    for _ in range(10):  # the closing period: a few PTOs of the clock
        if wire.client.is_closed:
            break
        wire.advance(1.0)
    ends = drain(wire.client, Terminated)
    assert [end.reason for end in ends] == ["no WebTransport session"]  # type: ignore[attr-defined]


def test_the_peer_abandoning_the_connection_ends_its_sessions(wire: Wire) -> None:
    _client, _server, seen = open_pair(wire)
    wire.client.close(0x100, "gone")
    wire.exchange()  # what the glue does after every call: send
    for _ in range(10):
        if wire.served.is_closed:
            break
        wire.advance(1.0)
    closed = seen[-1]
    assert isinstance(closed, events.SessionClosed)
    assert closed.info.code == CloseCode.ABORTED
    assert closed.info.reason == "gone"
    assert wire.served.sessions == {}


class _Raising:
    """Stands in for the library's connection: `datagrams_to_send` raises `times` times,
    everything else is the real one's."""

    def __init__(self, quic: Any, times: int) -> None:
        self._quic = quic
        self.times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._quic, name)

    def datagrams_to_send(self, now: float) -> Any:
        if self.times:
            self.times -= 1
            raise ValueError("reserved stream is missing")
        return self._quic.datagrams_to_send(now=now)


@pytest.mark.parametrize("times", [1, 1_000_000], ids=["once", "for good"])
def test_a_library_that_raises_while_sending_ends_only_its_connection(
    wire: Wire, times: int
) -> None:
    _client, _server, seen = open_pair(wire)
    adapter = wire.served.engine
    adapter._quic = _Raising(adapter._quic, times)  # type: ignore[attr-defined]
    with capture_logs() as logs:
        wire.exchange()  # nothing escapes from the send
        for _ in range(10):
            if wire.served.is_closed:
                break
            wire.advance(1.0)
    assert wire.served.is_closed
    closed = seen[-1]
    assert isinstance(closed, events.SessionClosed)
    assert "reserved stream is missing" in closed.info.reason
    assert [entry["event"] for entry in logs] == ["QUIC engine error: connection closed"]
