"""The asyncio glue of one connection: it owns the socket's sends and the timer.

Everything else is `WebTransportConnection` (sans I/O, `connection.py`): datagrams
received go in with the loop's time, what it has to send goes out once per loop
iteration (a burst of writes shares packets: 47 us to 7 us per datagram echo, measured
in ../shared/aioquic-notes.md), its timer becomes a `call_at`, and its connection
events resolve the futures the client's `connect()` waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, cast

from .connection import (
    ConnectionIdChanged,
    HandshakeCompleted,
    IncomingSession,
    OnRequest,
    PeerSettingsReceived,
    SessionRequested,
    SessionResponse,
    Terminated,
    WebTransportConnection,
)
from .engine import Address
from .errors import HandshakeError
from .session import Session

__all__ = ["WebTransportProtocol"]


class WebTransportProtocol(asyncio.DatagramProtocol):
    """Drives one `WebTransportConnection` on the running loop."""

    def __init__(
        self,
        connection: WebTransportConnection,
        *,
        on_request: OnRequest | None = None,
        on_terminated: Callable[[WebTransportProtocol], None] | None = None,
        on_cid: Callable[[WebTransportProtocol, bytes, bool], None] | None = None,
    ) -> None:
        self.connection = connection
        connection.send_ready = self._transmit_soon
        self._loop = asyncio.get_running_loop()
        self._on_request = on_request
        self._on_terminated = on_terminated
        self._on_cid = on_cid
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._connected: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._settings: asyncio.Future[None] | None = None
        self._responses: dict[int, asyncio.Future[Session]] = {}
        self.close_code: int | None = None
        """The QUIC error code the connection ended with, once it has."""

    @property
    def is_closed(self) -> bool:
        return self.connection.is_closed

    @property
    def accepting(self) -> bool:
        return self.connection.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self.connection.accepting = value

    # --- asyncio ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        # The timers keep running: the connection ends on its own (idle timeout), and
        # reports it, as one whose network vanished does.
        self._transport = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.connection.receive_datagram(data, addr, self._loop.time())
        self._dispatch()
        # At once, as aioquic's own protocol does. Deferring it to the end of the loop
        # iteration cut a datagram echo's server CPU by a quarter; what it does to a good
        # peer under a flood is still to be measured (docs/performance.md).
        self.transmit()

    def connect(self, addr: Address) -> None:
        self.connection.connect(addr, self._loop.time())
        self._dispatch()
        self.transmit()

    def close(self) -> None:
        """CONNECTION_CLOSE now; the sessions end when the connection is gone."""
        if not self.connection.is_closed:
            self.connection.close()
            self._dispatch()
            self.transmit()

    def transmit(self) -> None:
        """Send what the connection has to send and re-arm its timer."""
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        transport = self._transport
        datagrams = self.connection.datagrams_to_send(self._loop.time())
        if transport is not None:
            for data, addr in datagrams:
                transport.sendto(data, addr)
        self._dispatch()
        self._arm_timer()

    def _transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def _arm_timer(self) -> None:
        timer_at = self.connection.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def _handle_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = None
        self._timer_at = None
        self.connection.handle_timer(now)
        self._dispatch()
        self.transmit()

    # --- connection events -----------------------------------------------------------------
    def _dispatch(self) -> None:
        connection = self.connection
        while (event := connection.next_event()) is not None:
            if isinstance(event, SessionRequested):
                self._request(event.incoming)
            elif isinstance(event, SessionResponse):
                waiter = self._responses.pop(event.stream_id, None)
                if waiter is not None and not waiter.done():
                    if isinstance(event.result, Session):
                        waiter.set_result(event.result)
                    else:
                        waiter.set_exception(event.result)
            elif isinstance(event, ConnectionIdChanged):
                if self._on_cid is not None:
                    self._on_cid(self, event.cid, event.issued)
            elif isinstance(event, HandshakeCompleted):
                _resolve(self._connected)
            elif isinstance(event, PeerSettingsReceived):
                _resolve(self._settings)
            elif isinstance(event, Terminated):
                self.close_code = event.error_code
                self._terminated(event.reason)

    def _request(self, incoming: IncomingSession) -> None:
        if self._on_request is None:
            incoming.reject(503, "this endpoint serves no sessions", (("retry-after", "1"),))
        else:
            self._on_request(incoming)

    def _terminated(self, reason: str) -> None:
        error = HandshakeError(0, reason)
        for waiter in (self._connected, self._settings):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        _resolve(self._closed)
        if self._on_terminated is not None:
            self._on_terminated(self)

    # --- waiting ---------------------------------------------------------------------------
    async def wait_connected(self) -> None:
        if self.connection.handshake_done:
            return
        if self.connection.is_closed:
            raise HandshakeError(0, "connection closed")
        if self._connected is None:
            self._connected = self._loop.create_future()
        await asyncio.shield(self._connected)

    async def wait_closed(self) -> None:
        if self.connection.is_closed:
            return
        if self._closed is None:
            self._closed = self._loop.create_future()
        await asyncio.shield(self._closed)

    async def wait_delivered(self, stream_ids: Iterable[int], timeout: float) -> bool:
        return await self.connection.wait_delivered(stream_ids, timeout)

    async def open_session(
        self, authority: str, path: str, headers: list[tuple[str, str]], protocol: str
    ) -> Session:
        """Send an extended CONNECT once the server's SETTINGS are in; return the session."""
        if not self.connection.settings_received:
            if self.connection.is_closed:
                raise HandshakeError(0, "connection closed")
            if self._settings is None:
                self._settings = self._loop.create_future()
            await asyncio.shield(self._settings)
        stream_id = self.connection.request_session(authority, path, headers, protocol)
        waiter: asyncio.Future[Session] = self._loop.create_future()
        self._responses[stream_id] = waiter
        return await waiter


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
