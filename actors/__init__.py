"""aiowt.actors: loop-native pykka actors, session handler actors and shared services."""

from ._handler import Handler, run_session
from ._runtime import BlockingGetOnLoopError, LoopActor, LoopFuture, NoRunningLoopError
from .messages import (
    DatagramReceived,
    SessionClosed,
    SessionDraining,
    StreamDataReceived,
    StreamOpened,
    StreamReset,
)

__all__ = [
    "BlockingGetOnLoopError",
    "DatagramReceived",
    "Handler",
    "LoopActor",
    "LoopFuture",
    "NoRunningLoopError",
    "SessionClosed",
    "SessionDraining",
    "StreamDataReceived",
    "StreamOpened",
    "StreamReset",
    "run_session",
]
