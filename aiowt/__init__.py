"""aiowt: an actor-model WebTransport session runtime for Python.

The common case is one import: ``from aiowt import Server, Handler, connect``.

This package is the composition root. It puts together three layers, each a package
of its own that imports only the ones below it:

- `aiowt.transport`: WebTransport over HTTP/3 (sessions, streams, datagrams, the
  client), which imports nothing else of aiowt;
- `aiowt.actors`: loop-native pykka actors, the `Handler` base class and the shared
  services;
- `aiowt.middleware`: the middleware contract and the catalogue.

Here live `Server` (routes, chains, handler actors), the command line (`aiowt.cli`),
worker processes (`aiowt.workers`), and the testing kit (`aiowt.testing`, with its
pytest plugin).
"""

from aiowt.actors import Handler
from aiowt.transport import (
    AiowtError,
    CloseCode,
    CloseInfo,
    ConnectionLimits,
    HandshakeError,
    Key,
    PeerError,
    Rejected,
    Session,
    SessionClosedError,
    SessionContext,
    Stream,
    StreamClosedError,
    UsageError,
    connect,
)

from .routing import RouteGroup
from .server import Server

__all__ = [
    "AiowtError",
    "CloseCode",
    "CloseInfo",
    "ConnectionLimits",
    "Handler",
    "HandshakeError",
    "Key",
    "PeerError",
    "Rejected",
    "RouteGroup",
    "Server",
    "Session",
    "SessionClosedError",
    "SessionContext",
    "Stream",
    "StreamClosedError",
    "UsageError",
    "connect",
]
