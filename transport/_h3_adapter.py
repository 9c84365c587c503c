"""What the two engines share: an `EngineConnection` over an aioquic-shaped library.

qh3 is a fork of aioquic: the same sans-I/O `QuicConnection` and the same HTTP/3 layer
in Python, on a Rust QUIC core. So one class turns either's QUIC and HTTP/3 events into
`EngineEvent`s, and one `H3Engine` makes either's connections; each engine module supplies its event
classes and the few answers that need its internals (`Library`, and the methods left
to subclasses). Three private names the two share are used here, once: the
connection's `_stream_can_send`, the HTTP/3 layer's `_stream` table (dropped per stream,
or it leaks) and its `_get_local_settings` (to advertise more settings).

What the HTTP/3 layers leave out or get wrong for WebTransport (measured in
../shared/aioquic-notes.md) is handled here, once: bytes on a bidirectional stream this
side opened bypass the HTTP/3 parser (which would mangle them or close the
connection); streams forgotten while the peer may still send keep bypassing it, their
late bytes dropped; resets and STOP_SENDING are reported for every stream.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import structlog

from .engine import (
    Address,
    CidIssued,
    CidRetired,
    ConnectDataReceived,
    EngineEvent,
    HandshakeDone,
    HeadersReceived,
    QuicOptions,
    SettingsReceived,
    StreamAborted,
    Terminated,
    WtDatagramReceived,
    WtStreamDataReceived,
)
from .errors import UsageError

__all__ = [
    "WT_SETTINGS",
    "H3Adapter",
    "H3Engine",
    "Library",
    "varint_size",
    "with_wt_settings",
    "wt_settings",
]

log = structlog.get_logger("aiowt.transport")

# Both libraries log a refused handshake on the "quic" logger; with no handler configured,
# Python's last-resort handler printed it beside the error aiowt raises, which names it.
logging.getLogger("quic").addHandler(logging.NullHandler())

_INTERNAL_ERROR = 0x1
ENABLE_CONNECT_PROTOCOL = 0x8
WT_MAX_SESSIONS = (0xC671706A, 0x14E9CD29)
"""Draft-07 and draft-13+ codepoints: Safari 26.4+ and draft-15 stacks need one of them."""
WT_ENABLED = 0x2C7CF000
WT_INITIAL_MAX_DATA = 0x2B61
WT_INITIAL_MAX_STREAMS_UNI = 0x2B64
WT_INITIAL_MAX_STREAMS_BIDI = 0x2B65
_UNLIMITED = (1 << 62) - 1
"""No WebTransport-level flow control is enforced: QUIC's own limits the peer's streams
and bytes, so the session-level initial limits are advertised as unbounded (a peer of
the later drafts that saw none would assume 0 and open nothing)."""
WT_SETTINGS = (
    WT_ENABLED,
    WT_INITIAL_MAX_DATA,
    WT_INITIAL_MAX_STREAMS_UNI,
    WT_INITIAL_MAX_STREAMS_BIDI,
    *WT_MAX_SESSIONS,
)


def varint_size(value: int) -> int:
    """Bytes a QUIC variable-length integer takes for `value`."""
    return 1 if value < 1 << 6 else 2 if value < 1 << 14 else 4 if value < 1 << 30 else 8


def wt_settings(max_sessions: int) -> dict[int, int]:
    """The settings advertised beside a library's own draft-02 WebTransport ones."""
    settings = dict.fromkeys(WT_MAX_SESSIONS, max_sessions)
    settings[ENABLE_CONNECT_PROTOCOL] = 1
    settings[WT_ENABLED] = 1
    settings[WT_INITIAL_MAX_DATA] = _UNLIMITED
    settings[WT_INITIAL_MAX_STREAMS_UNI] = _UNLIMITED
    settings[WT_INITIAL_MAX_STREAMS_BIDI] = _UNLIMITED
    return settings


@dataclass(frozen=True)
class Library:
    """One aioquic-shaped library: the classes the adapter makes and dispatches on."""

    name: str
    quic_connection: type[Any]
    """The QuicConnection class to make (qh3's carries aiowt's workaround)."""
    configuration: type[Any]
    h3_connection: type[Any]
    """Its H3Connection, advertising the later drafts' settings too (`with_wt_settings`)."""
    load_certificate: Callable[[Any, bytes, bytes], None]
    peek: Callable[[bytes, int], tuple[int | None, int, bytes, bytes]]
    """(version, packet type, destination id, source id) of a datagram's first packet."""
    version_negotiation: Callable[..., bytes]
    h3_alpn: tuple[str, ...]
    quic_events: ModuleType
    h3_events: ModuleType
    stream_gone: tuple[type[BaseException], ...]
    """What the library raises for an operation on a stream that ended or is unknown."""
    cannot_encode: tuple[type[BaseException], ...] = ()
    """What its QPACK encoder raises for a header block it cannot encode."""
    closing: tuple[type[BaseException], ...] = ()
    """What a send raises once the connection is closing (before it has terminated and
    aiowt ended its sessions): such a send is lost, as on a connection that is gone."""
    protocol_negotiated: type[Any] = field(init=False)
    handshake_completed: type[Any] = field(init=False)
    connection_terminated: type[Any] = field(init=False)
    cid_issued: type[Any] = field(init=False)
    cid_retired: type[Any] = field(init=False)
    stream_data: type[Any] = field(init=False)
    stream_reset: type[Any] = field(init=False)
    stop_sending: type[Any] = field(init=False)
    h3_headers: type[Any] = field(init=False)
    h3_data: type[Any] = field(init=False)
    h3_datagram: type[Any] = field(init=False)
    h3_wt_stream_data: type[Any] = field(init=False)

    def __post_init__(self) -> None:
        quic, h3 = self.quic_events, self.h3_events
        # Looked up once: the event loop of `H3Adapter` dispatches on these.
        for name, event in (
            ("protocol_negotiated", quic.ProtocolNegotiated),
            ("handshake_completed", quic.HandshakeCompleted),
            ("connection_terminated", quic.ConnectionTerminated),
            ("cid_issued", quic.ConnectionIdIssued),
            ("cid_retired", quic.ConnectionIdRetired),
            ("stream_data", quic.StreamDataReceived),
            ("stream_reset", quic.StreamReset),
            ("stop_sending", quic.StopSendingReceived),
            ("h3_headers", h3.HeadersReceived),
            ("h3_data", h3.DataReceived),
            ("h3_datagram", h3.DatagramReceived),
            ("h3_wt_stream_data", h3.WebTransportStreamDataReceived),
        ):
            object.__setattr__(self, name, event)

    def options(self, options: QuicOptions) -> Any:
        """The library's configuration for `options` (datagrams on, certificates loaded)."""
        config = self.configuration(
            alpn_protocols=list(self.h3_alpn),
            is_client=options.is_client,
            max_datagram_frame_size=options.max_datagram_frame_size,
            idle_timeout=options.idle_timeout,
            server_name=options.server_name,
        )
        if options.cert_pem is not None and options.key_pem is not None:
            self.load_certificate(config, options.cert_pem, options.key_pem)
        if not options.verify:
            config.verify_mode = ssl.CERT_NONE
        elif options.ca_file is not None:
            config.load_verify_locations(cafile=options.ca_file)
        return config


def with_wt_settings(h3_connection: type[Any]) -> type[Any]:
    """`h3_connection` advertising `wt_settings` beside its own (both libraries build
    their SETTINGS in `_get_local_settings`, the one private name overridden here)."""

    class WebTransportH3(h3_connection):  # type: ignore[misc]
        def __init__(self, quic: Any, max_sessions: int) -> None:
            self._max_sessions = max_sessions  # read by the SETTINGS sent from __init__
            super().__init__(quic, enable_webtransport=True)

        def _get_local_settings(self) -> dict[int, int]:
            settings: dict[int, int] = super()._get_local_settings()
            settings.update(wt_settings(self._max_sessions))
            return settings

    return WebTransportH3


@dataclass(frozen=True)
class _ServerConfig:
    quic: Any
    max_sessions: int


class H3Engine:
    """An `Engine` over an aioquic-shaped library: `connection` is its adapter class."""

    def __init__(self, connection: type[H3Adapter]) -> None:
        self.connection = connection
        self.library = connection.library
        self.name = self.library.name

    def client(self, options: QuicOptions) -> H3Adapter:
        quic = self.library.quic_connection(configuration=self.library.options(options))
        return self.connection(quic, options.max_sessions)

    def server_config(self, options: QuicOptions) -> _ServerConfig:
        return _ServerConfig(self.library.options(options), options.max_sessions)

    def server(self, config: object, original_destination_connection_id: bytes) -> H3Adapter:
        assert isinstance(config, _ServerConfig)
        quic = self.library.quic_connection(
            configuration=config.quic,
            original_destination_connection_id=original_destination_connection_id,
        )
        return self.connection(quic, config.max_sessions)

    def route(self, data: bytes, config: object) -> tuple[bytes, bool, bytes | None]:
        assert isinstance(config, _ServerConfig)
        versions = config.quic.supported_versions
        version, packet_type, destination, source = self.library.peek(
            data, config.quic.connection_id_length
        )
        if packet_type != _VERSION_NEGOTIATION and version is not None and version not in versions:
            reply = self.library.version_negotiation(
                source_cid=destination, destination_cid=source, supported_versions=versions
            )
            return destination, False, reply
        return destination, packet_type == _INITIAL and len(data) >= 1200, None


_INITIAL = 0
_VERSION_NEGOTIATION = 4
"""QUIC packet types as both libraries number them."""


class H3Adapter:
    """One QUIC connection of an aioquic-shaped library, seen through the engine seam."""

    library: Library

    def __init__(self, quic: Any, max_sessions: int) -> None:
        self._quic = quic
        self._max_sessions = max_sessions
        self._h3: Any = None
        self._events: collections.deque[EngineEvent] = collections.deque()
        self._raw_bidi: set[int] = set()
        self._discarded: set[int] = set()
        self._settings_seen = False
        self._started = False
        self._broken = False
        """The library raised even while closing: this connection is given up locally."""
        """aioquic has no timer to answer for until the first packet goes either way."""
        self.host_cid: bytes = quic.host_cid

    # --- what each library answers in its own way ---------------------------------------
    @property
    def name(self) -> str:
        return self.library.name

    def _make_h3(self) -> Any:
        return self.library.h3_connection(self._quic, self._max_sessions)

    def _drop_h3_state(self, stream_id: int) -> None:
        self._h3._stream.pop(stream_id, None)

    def _datagram_session(self, event: Any) -> int:
        raise NotImplementedError

    def send_wt_datagram(self, session_id: int, data: bytes) -> None:
        raise NotImplementedError

    def _can_send(self, stream_id: int) -> bool:
        return bool(self._quic._stream_can_send(stream_id))

    def _can_receive(self, stream_id: int) -> bool:
        raise NotImplementedError

    # --- sans-I/O -----------------------------------------------------------------------
    def connect(self, addr: Address, now: float) -> None:
        self._started = True
        self._quic.connect(addr, now=now)
        self._pump()

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if self._broken:
            return
        self._started = True
        try:
            self._quic.receive_datagram(data, addr, now)
        except Exception as exc:
            self._fail(exc)
        self._pump()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        if self._broken:
            return []
        try:
            sent: list[tuple[bytes, Address]] = self._quic.datagrams_to_send(now=now)
        except Exception as exc:
            # qh3 2.1 under loss ("reserved stream is missing", docs/engines.md):
            # close, and send the close if the library still can.
            self._fail(exc)
            try:
                sent = self._quic.datagrams_to_send(now=now)
            except Exception:
                self._give_up(exc)
                return []
        return sent

    def get_timer(self) -> float | None:
        if not self._started or self._broken:
            return None
        timer: float | None = self._quic.get_timer()
        return timer

    def handle_timer(self, now: float) -> None:
        if self._broken:
            return
        try:
            self._quic.handle_timer(now)
        except Exception as exc:
            self._fail(exc)
        self._pump()

    def _fail(self, exc: Exception) -> None:
        """The library raised where it should have reported: close this connection
        (INTERNAL_ERROR, the error named) rather than let it reach the event loop."""
        log.warning("QUIC engine error: connection closed", engine=self.name, error=repr(exc))
        with contextlib.suppress(Exception):
            self._quic.close(error_code=_INTERNAL_ERROR, reason_phrase=f"{self.name}: {exc}")

    def _give_up(self, exc: Exception) -> None:
        """The library cannot even send its close: end the connection here (its sessions
        end ABORTED, named); the peer times out."""
        self._broken = True
        self._events.append(Terminated(_INTERNAL_ERROR, f"{self.name}: {exc}"))

    def next_event(self) -> EngineEvent | None:
        return self._events.popleft() if self._events else None

    def close(self, error_code: int, reason: str) -> None:
        self._quic.close(error_code=error_code, reason_phrase=reason)
        self._pump()

    # --- HTTP/3 -------------------------------------------------------------------------
    def next_request_stream_id(self) -> int:
        stream_id: int = self._quic.get_next_available_stream_id()
        return stream_id

    def send_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None:
        try:
            self._h3.send_headers(stream_id, headers, end_stream=end_stream)
        except self.library.cannot_encode as exc:
            size = sum(len(name) + len(value) for name, value in headers)
            raise UsageError(
                f"the {self.name} engine cannot encode this {size}-byte header block"
                f" ({exc.__cause__ or exc}): send smaller header values"
            ) from exc
        except self.library.stream_gone:
            pass

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        with contextlib.suppress(*self.library.stream_gone):
            self._h3.send_data(stream_id, data, end_stream=end_stream)

    @property
    def received_settings(self) -> dict[int, int] | None:
        if self._h3 is None:
            return None
        settings: dict[int, int] | None = self._h3.received_settings
        return settings

    # --- WebTransport streams -----------------------------------------------------------
    def open_wt_stream(self, session_id: int, unidirectional: bool) -> int:
        stream_id: int = self._h3.create_webtransport_stream(
            session_id, is_unidirectional=unidirectional
        )
        if not unidirectional:
            self._raw_bidi.add(stream_id)
        return stream_id

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        with contextlib.suppress(*self.library.closing):
            self._quic.send_stream_data(stream_id, data, end_stream)

    def reset_stream(self, stream_id: int, h3_code: int) -> None:
        with contextlib.suppress(*self.library.stream_gone):
            if self._can_send(stream_id):
                self._quic.reset_stream(stream_id, h3_code)

    def stop_stream(self, stream_id: int, h3_code: int) -> None:
        with contextlib.suppress(*self.library.stream_gone):
            if self._can_receive(stream_id):
                self._quic.stop_stream(stream_id, h3_code)

    def forget_stream(self, stream_id: int, peer_may_send: bool) -> None:
        self._raw_bidi.discard(stream_id)
        if self._h3 is not None:
            # The HTTP/3 layer keeps state for peer-opened streams until it sees both
            # directions end, and it never sees ours: drop it here or it leaks.
            self._drop_h3_state(stream_id)
        if peer_may_send:
            self._discarded.add(stream_id)

    # --- events -------------------------------------------------------------------------
    def _pump(self) -> None:
        quic = self._quic
        while (event := quic.next_event()) is not None:
            self._quic_event(event)
        if not self._settings_seen and self._h3 is not None:
            settings = self._h3.received_settings
            if settings is not None:
                self._settings_seen = True
                self._events.append(SettingsReceived(dict(settings)))

    def _quic_event(self, event: Any) -> None:
        lib = self.library
        emit = self._events.append
        if isinstance(event, lib.stream_data):
            sid = event.stream_id
            if sid in self._discarded:
                if event.end_stream:
                    self._discarded.discard(sid)
                return
            if sid in self._raw_bidi:
                emit(WtStreamDataReceived(sid, None, event.data, event.end_stream))
                return
        elif isinstance(event, lib.stream_reset | lib.stop_sending):
            sid = event.stream_id
            reset = isinstance(event, lib.stream_reset)
            if sid in self._discarded:
                if reset:
                    self._discarded.discard(sid)
                return
            emit(StreamAborted(sid, event.error_code, reset))
        elif isinstance(event, lib.protocol_negotiated):
            if event.alpn_protocol in lib.h3_alpn:
                self._h3 = self._make_h3()
            return
        elif isinstance(event, lib.handshake_completed):
            emit(HandshakeDone())
            return
        elif isinstance(event, lib.connection_terminated):
            emit(Terminated(event.error_code, event.reason_phrase or ""))
            return
        elif isinstance(event, lib.cid_issued):
            emit(CidIssued(event.connection_id))
            return
        elif isinstance(event, lib.cid_retired):
            emit(CidRetired(event.connection_id))
            return
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: Any) -> None:
        lib = self.library
        emit = self._events.append
        if isinstance(event, lib.h3_wt_stream_data):
            emit(
                WtStreamDataReceived(
                    event.stream_id, event.session_id, event.data, event.stream_ended
                )
            )
        elif isinstance(event, lib.h3_datagram):
            emit(WtDatagramReceived(self._datagram_session(event), event.data))
        elif isinstance(event, lib.h3_headers):
            emit(HeadersReceived(event.stream_id, list(event.headers), event.stream_ended))
        elif isinstance(event, lib.h3_data):
            emit(ConnectDataReceived(event.stream_id, event.data, event.stream_ended))
