"""aiowt.transport: WebTransport over HTTP/3 on aioquic, for servers and clients.

The bottom layer: it imports nothing else of aiowt. The server that puts routes,
middleware and handler actors on top of it is `aiowt.Server`.
"""

from __future__ import annotations

from .codes import CloseCode, StreamErrorCode
from .context import CloseInfo, Key, SessionContext
from .endpoint import connect
from .errors import (
    AiowtError,
    DatagramTooLarge,
    FrameTooLarge,
    HandshakeError,
    MalformedFrame,
    MalformedQuery,
    PeerError,
    Rejected,
    SessionClosedError,
    StreamClosedError,
    UsageError,
    WriteBufferFull,
)
from .limits import ConnectionLimits
from .reconnect import Reconnecting
from .request import ConnectRequest
from .session import Session, SessionTap, Stream, wait_close_delivered

__all__ = [
    "AiowtError",
    "CloseCode",
    "CloseInfo",
    "ConnectRequest",
    "ConnectionLimits",
    "DatagramTooLarge",
    "FrameTooLarge",
    "HandshakeError",
    "Key",
    "MalformedFrame",
    "MalformedQuery",
    "PeerError",
    "Reconnecting",
    "Rejected",
    "Session",
    "SessionClosedError",
    "SessionContext",
    "SessionTap",
    "Stream",
    "StreamClosedError",
    "StreamErrorCode",
    "UsageError",
    "WriteBufferFull",
    "connect",
    "wait_close_delivered",
]
