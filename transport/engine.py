"""The QUIC engine seam: what a QUIC + HTTP/3 library must do for aiowt, and nothing more.

An engine is sans-I/O, like the libraries it wraps: datagrams and `now` go in; datagrams
to send, a timer and past-tense `EngineEvent`s come out. `WebTransportConnection`
(`connection.py`) speaks WebTransport over any engine; the asyncio glue
(`_protocol.py`) owns the socket and the timer. Two engines exist: `aioquic` (the
default) and `qh3` (an aioquic fork on a Rust QUIC core: `pip install aiowt[qh3]`).

Every private detail of a library stays inside its adapter module
(`engine_aioquic.py`, `engine_qh3.py`); what they share is in `_h3_adapter.py`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Protocol

from .errors import UsageError

__all__ = [
    "ENGINES",
    "ENGINE_ENV",
    "Address",
    "CidIssued",
    "CidRetired",
    "ConnectDataReceived",
    "Engine",
    "EngineConnection",
    "EngineEvent",
    "HandshakeDone",
    "HeadersReceived",
    "QuicOptions",
    "SettingsReceived",
    "StreamAborted",
    "Terminated",
    "WtDatagramReceived",
    "WtStreamDataReceived",
    "check_engine",
    "default_engine",
    "get_engine",
]

Address = tuple[str, int]
ENGINES = ("aioquic", "qh3")
"""The engine names `Server(engine=...)`, `aiowt run --engine` and `connect()` accept."""
ENGINE_ENV = "AIOWT_ENGINE"


def default_engine() -> str:
    """The engine used where none is named: `$AIOWT_ENGINE`, else aioquic."""
    name = os.environ.get(ENGINE_ENV) or "aioquic"
    check_engine(name)
    return name


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise UsageError(f"unknown QUIC engine {name!r}: choose one of {', '.join(ENGINES)}")


# --- what comes out ----------------------------------------------------------------------
class EngineEvent:
    """Something the engine saw on the wire, in HTTP/3 and WebTransport terms."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeDone(EngineEvent):
    """QUIC and TLS are up with HTTP/3 negotiated; the local SETTINGS are queued."""


@dataclass(frozen=True, slots=True)
class SettingsReceived(EngineEvent):
    settings: dict[int, int]


@dataclass(frozen=True, slots=True)
class HeadersReceived(EngineEvent):
    """A request (server) or response (client) header block on a request stream."""

    stream_id: int
    headers: list[tuple[bytes, bytes]]
    ended: bool


@dataclass(frozen=True, slots=True)
class ConnectDataReceived(EngineEvent):
    """HTTP/3 DATA on a request stream: capsules, for a CONNECT stream."""

    stream_id: int
    data: bytes
    ended: bool


@dataclass(frozen=True, slots=True)
class WtStreamDataReceived(EngineEvent):
    """Bytes on a WebTransport stream; `session_id` is None on one this side opened."""

    stream_id: int
    session_id: int | None
    data: bytes
    ended: bool


@dataclass(frozen=True, slots=True)
class WtDatagramReceived(EngineEvent):
    session_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamAborted(EngineEvent):
    """The peer reset a stream (`reset`) or asked us to stop sending on it."""

    stream_id: int
    h3_code: int
    reset: bool


@dataclass(frozen=True, slots=True)
class Terminated(EngineEvent):
    error_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CidIssued(EngineEvent):
    """A listener routes datagrams for `cid` to this connection from now on."""

    cid: bytes


@dataclass(frozen=True, slots=True)
class CidRetired(EngineEvent):
    cid: bytes


# --- what goes in ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QuicOptions:
    """An engine-neutral QUIC configuration for HTTP/3 WebTransport."""

    is_client: bool
    idle_timeout: float = 30.0
    max_datagram_frame_size: int = 65536
    cert_pem: bytes | None = None
    """Server: the certificate chain (leaf first) and its key, as PEM."""
    key_pem: bytes | None = None
    server_name: str | None = None
    verify: bool = True
    """Client: verify the server's certificate (off when a SHA-256 is pinned instead)."""
    ca_file: str | None = None
    max_sessions: int = 64
    """Advertised as WT_MAX_SESSIONS."""


class EngineConnection(Protocol):
    """One QUIC connection with HTTP/3 on it, in the terms WebTransport needs.

    Stream operations on a stream that is gone or finished do nothing: a verdict,
    reset or stop to a peer that already left is not an error.
    """

    host_cid: bytes

    # sans-I/O
    def connect(self, addr: Address, now: float) -> None: ...
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> EngineEvent | None: ...
    def close(self, error_code: int, reason: str) -> None: ...

    # HTTP/3 requests
    def next_request_stream_id(self) -> int: ...
    def send_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None: ...
    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...
    @property
    def received_settings(self) -> dict[int, int] | None: ...

    # WebTransport streams and datagrams
    def open_wt_stream(self, session_id: int, unidirectional: bool) -> int: ...
    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...
    def reset_stream(self, stream_id: int, h3_code: int) -> None: ...
    def stop_stream(self, stream_id: int, h3_code: int) -> None: ...
    def forget_stream(self, stream_id: int, peer_may_send: bool) -> None:
        """Drop all state of `stream_id`; later data and resets on it are ignored when
        `peer_may_send` (never handed to HTTP/3, which would parse them as frames)."""

    def send_buffer_size(self, stream_id: int) -> int: ...
    def stream_delivered(self, stream_id: int) -> bool:
        """All we sent on `stream_id`, its end included, is acknowledged (or never can be)."""

    def send_wt_datagram(self, session_id: int, data: bytes) -> None: ...
    def max_datagram_payload(self, session_id: int) -> int: ...
    def pending_datagrams(self) -> int: ...
    def peer_certificate_der(self) -> bytes | None: ...


class Engine(Protocol):
    """A QUIC library behind the seam: it makes connections and reads packet headers."""

    name: str

    def client(self, options: QuicOptions) -> EngineConnection: ...
    def server_config(self, options: QuicOptions) -> object:
        """A server configuration, made once per listener (certificates parsed once)."""

    def server(
        self, config: object, original_destination_connection_id: bytes
    ) -> EngineConnection: ...
    def route(self, data: bytes, config: object) -> tuple[bytes, bool, bytes | None]:
        """(destination connection id, a new connection may start here, a version
        negotiation reply to send instead) for one datagram to a listener; raises
        ValueError when the datagram is not QUIC."""


def get_engine(name: str | None = None) -> Engine:
    """The engine called `name` (default: `default_engine()`); `UsageError` when unknown
    or its library is not installed."""
    name = name or default_engine()
    check_engine(name)
    try:
        module = importlib.import_module(f"{__package__}.engine_{name}")
    except ImportError as exc:
        raise UsageError(
            f"the {name} engine needs its library: pip install 'aiowt[{name}]' ({exc})"
        ) from exc
    engine: Engine = module.ENGINE
    return engine
