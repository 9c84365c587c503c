"""aiowt.transport: WebTransport over HTTP/3 on aioquic, for servers and clients.

`Server` (routes, middleware, handler actors) is imported lazily: it is the composition
root that pulls in `aiowt.middleware` and `aiowt.actors`, which themselves build on the
lower modules of this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codes import CloseCode, StreamErrorCode
from .context import CloseInfo, Key, SessionContext
from .endpoint import connect
from .errors import (
    AiowtError,
    DatagramTooLarge,
    FrameTooLarge,
    HandshakeError,
    MalformedFrame,
    PeerError,
    Rejected,
    SessionClosedError,
    StreamClosedError,
    UsageError,
    WriteBufferFull,
)
from .limits import ConnectionLimits
from .request import ConnectRequest
from .session import Session, SessionListener, SessionTap, Stream

if TYPE_CHECKING:
    from .server import Server

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
    "PeerError",
    "Rejected",
    "Server",
    "Session",
    "SessionClosedError",
    "SessionContext",
    "SessionListener",
    "SessionTap",
    "Stream",
    "StreamClosedError",
    "StreamErrorCode",
    "UsageError",
    "WriteBufferFull",
    "connect",
]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from .server import Server

        return Server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
