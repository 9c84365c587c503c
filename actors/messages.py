"""Messages a session actor receives from the transport: immutable, named for what happened."""

from __future__ import annotations

from dataclasses import dataclass

from aiowt.transport.context import CloseInfo
from aiowt.transport.session import Stream

__all__ = [
    "DatagramReceived",
    "SessionClosed",
    "SessionDraining",
    "StreamDataReceived",
    "StreamOpened",
    "StreamReset",
    "TransportEvent",
]


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream: Stream


@dataclass(frozen=True, slots=True)
class StreamDataReceived:
    stream: Stream
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream: Stream
    code: int


@dataclass(frozen=True, slots=True)
class SessionDraining:
    pass


@dataclass(frozen=True, slots=True)
class SessionClosed:
    info: CloseInfo


TransportEvent = (
    DatagramReceived
    | StreamOpened
    | StreamDataReceived
    | StreamReset
    | SessionDraining
    | SessionClosed
)
