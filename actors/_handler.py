"""`Handler`: the session actor users subclass, one instance per WebTransport session."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import pykka
import structlog

from aiowt.transport import (
    CloseCode,
    CloseInfo,
    PeerError,
    Session,
    SessionClosedError,
    SessionContext,
    Stream,
)
from aiowt.transport.events import (
    DatagramReceived,
    InboundEvent,
    SessionClosed,
    SessionDraining,
    StreamDataReceived,
    StreamOpened,
    StreamReset,
)
from aiowt.transport.framing import FrameDecoder, decode_message

from ._runtime import LoopActor

if TYPE_CHECKING:
    from pykka._envelope import Envelope
    from pykka._types import OptExcInfo

__all__ = ["Handler", "run_session"]

log = structlog.get_logger("aiowt.session")


class Handler(LoopActor):
    """Base class of handler actors.

    The server starts one instance per accepted session, as `cls.start(ctx, session)`
    (override `__init__` with the same two arguments and call `super().__init__`). Every
    hook is an `async def` run inside the actor, one event at a time, so the handler's
    own state needs no locks. Hooks:

    - `on_start()`, then traffic: `on_datagram(data)`, `on_stream(stream)`,
      `on_stream_data(stream, data, end_stream)`, `on_stream_end(stream)`,
      `on_stream_reset(stream, code)`, `on_message(message, stream)`,
      `on_peer_error(error, stream)`, `on_draining()`; last `on_stop()` with
      `self.close_info` set.
    - By default `on_datagram` decodes one msgpack object per datagram and
      `on_stream_data` decodes length-prefixed msgpack frames, each handed to
      `on_message` (`stream` is `None` for a datagram). Override them for raw bytes.
    - The hooks are fed by the session's events (`aiowt.transport.events`), which
      arrive as the actor's messages. Any other message sent to the actor (by
      `tell`/`ask`, from rooms or other actors) goes to pykka's `on_receive`.

    An exception in a hook closes this session with `CloseCode.INTERNAL_ERROR`, is
    logged, and is reported to the middleware chain; no other session notices.
    """

    register_globally: ClassVar[bool] = False
    """Session actors stay out of pykka's list-based registry (O(n) unregister)."""

    def __init__(self, ctx: SessionContext, session: Session) -> None:
        super().__init__()
        self.ctx = ctx
        self.session = session
        self.close_info: CloseInfo | None = None
        self.failure: BaseException | None = None
        self._decoders: dict[int, FrameDecoder | None] = {}
        """Per stream: its decoder, or None once its framing failed."""
        self._outbound: Stream | None = None
        self._on_stop_ran = False

    # --- the API for sending ---------------------------------------------------------------
    def send_datagram(self, data: bytes) -> bool:
        return self.session.send_datagram(data)

    def send_datagram_message(self, message: Any) -> bool:
        return self.session.send_datagram_message(message)

    def open_stream(self, *, unidirectional: bool = False) -> Stream:
        return self.session.open_stream(unidirectional=unidirectional)

    def send_message(self, message: Any, stream: Stream | None = None) -> None:
        """Send a msgpack frame on `stream`, or on this session's outbound message stream.

        The outbound message stream is one server-opened unidirectional stream, opened on
        first use and kept for the session's life, so messages keep their order.
        """
        if stream is None:
            if self._outbound is None or not self._outbound.writable:
                self._outbound = self.session.open_stream(unidirectional=True)
            stream = self._outbound
        stream.send_message(message)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.session.close(code, reason)

    # --- hooks -------------------------------------------------------------------------------
    async def on_start(self) -> None:  # type: ignore[override]
        pass

    async def on_stop(self) -> None:  # type: ignore[override]
        pass

    async def on_datagram(self, data: bytes) -> None:
        await self.on_message(decode_message(data, max_size=self.session.max_message_size), None)

    async def on_stream(self, stream: Stream) -> None:
        pass

    async def on_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        stream_id = stream.stream_id
        decoder = self._decoders.get(stream_id)
        if decoder is None and stream_id in self._decoders:
            # The stream's framing failed: what follows is the inside of a refused
            # frame, never a message of its own.
            if end_stream:
                del self._decoders[stream_id]
            return
        if decoder is None:
            decoder = self._decoders[stream_id] = FrameDecoder(self.session.max_message_size)
        try:
            for message in decoder.messages(data):
                await self.on_message(message, stream)
            if end_stream:
                decoder.close()
        except PeerError:
            if end_stream:
                del self._decoders[stream_id]
            else:
                self._decoders[stream_id] = None
            raise
        if end_stream:
            del self._decoders[stream_id]
            await self.on_stream_end(stream)

    async def on_stream_end(self, stream: Stream) -> None:
        pass

    async def on_stream_reset(self, stream: Stream, code: int) -> None:
        self._decoders.pop(stream.stream_id, None)

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        pass

    async def on_draining(self) -> None:
        pass

    async def on_peer_error(self, error: PeerError, stream: Stream | None) -> None:
        """The peer sent something malformed or oversized: close with the error's code."""
        log.info("peer error", error=str(error), code=error.code, **self.ctx.ids)
        self.close(error.code, str(error))

    # --- dispatch and lifecycle ----------------------------------------------------------------
    def _handle_receive(self, message: Any) -> Any:
        if type(message) in _INBOUND_EVENTS:
            return self._dispatch(message)
        return super()._handle_receive(message)

    async def _dispatch(self, event: InboundEvent) -> None:
        stream: Stream | None = None
        try:
            if isinstance(event, DatagramReceived):
                self.session.inbox_bytes -= len(event.data)
                await self.on_datagram(event.data)
            elif isinstance(event, StreamDataReceived):
                self.session.inbox_bytes -= len(event.data)
                stream = event.stream
                await self.on_stream_data(stream, event.data, event.end_stream)
            elif isinstance(event, StreamOpened):
                await self.on_stream(event.stream)
            elif isinstance(event, StreamReset):
                await self.on_stream_reset(event.stream, event.code)
            elif isinstance(event, SessionDraining):
                await self.on_draining()
            elif isinstance(event, SessionClosed):
                self.close_info = event.info
                await self._stop_async()
        except PeerError as error:
            await self.on_peer_error(error, stream)
        except SessionClosedError:
            # Events queued before the session closed still reach the handler; replying
            # to one is not a handler bug, just too late.
            pass

    async def _stop_async(self) -> None:
        # Stopping the actor (by the session's end or by `ref.stop()`) ends the session.
        self._mark_stopped()
        if not self.session.closed:
            self.session.close(CloseCode.NORMAL, "")
        await self._run_on_stop()

    async def _run_on_stop(self) -> None:
        if self._on_stop_ran:
            return
        self._on_stop_ran = True
        if self.close_info is None:
            self.close_info = self.session.close_info
        await self._call_hook(self.on_stop)

    async def _handle_envelope_failure(self, envelope: Envelope[Any], exc_info: OptExcInfo) -> None:
        error = exc_info[1]
        if envelope.reply_to is None and isinstance(error, PeerError):
            # e.g. WriteBufferFull from a message told by a room: the peer's fault, not
            # a handler bug, so it is handled as any other peer error.
            await self._call_hook(lambda: self.on_peer_error(error, None))
            return
        await super()._handle_envelope_failure(envelope, exc_info)

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super()._handle_failure(exception_type, exception_value, traceback)
        if self.failure is None and exception_value is not None:
            self.failure = exception_value
            if self.session.closed:
                pass
            elif isinstance(exception_value, PeerError):
                self.session.close(exception_value.code, str(exception_value))
            else:
                self.session.close(CloseCode.INTERNAL_ERROR, "internal error")


_INBOUND_EVENTS = frozenset(
    {
        DatagramReceived,
        StreamDataReceived,
        StreamOpened,
        StreamReset,
        SessionDraining,
        SessionClosed,
    }
)


class _Inbox:
    """A session's event sink: tells each inbound event to the session's handler actor."""

    __slots__ = ("_session", "_tell")

    def __init__(self, ref: pykka.ActorRef[Any], session: Session) -> None:
        self._tell = ref.tell
        self._session = session

    def __call__(self, event: InboundEvent) -> None:
        if isinstance(event, DatagramReceived | StreamDataReceived) and not self._admit(
            len(event.data)
        ):
            return
        # The handler may have stopped already: late traffic has nowhere to go.
        with contextlib.suppress(pykka.ActorDeadError):
            self._tell(event)

    def _admit(self, size: int) -> bool:
        # aioquic grants flow-control credit as data arrives, not as it is handled: this
        # is what keeps a peer faster than its handler from growing the inbox unbounded.
        session = self._session
        session.inbox_bytes += size
        if session.inbox_bytes <= session.max_inbox_bytes:
            return True
        if not session.closed:
            log.info("peer sends faster than its handler handles", queued=session.inbox_bytes)
            session.close(
                CloseCode.RATE_LIMITED,
                f"more than {session.max_inbox_bytes} bytes received and not yet handled",
            )
        session.inbox_bytes -= size
        return False


def attach_handler(session: Session, ref: pykka.ActorRef[Any]) -> Handler:
    """Send `session`'s events to the handler actor `ref` (started for it); return it."""
    handler = ref._actor_weakref()
    assert isinstance(handler, Handler)  # its running task keeps it alive
    session.attach(_Inbox(ref, session))
    return handler


async def run_session(
    handler_class: type[Handler], ctx: SessionContext, session: Session
) -> BaseException | None:
    """Run one session's handler actor to its end; return the exception that ended it, if any.

    Whatever happens, the session is closed and the handler's `on_stop` has run once
    when this returns.
    """
    try:
        ref = handler_class.start(ctx, session)
    except Exception as error:
        log.exception("handler failed to start", **ctx.ids)
        session.close(CloseCode.INTERNAL_ERROR, "internal error")
        return error
    handler = attach_handler(session, ref)
    task = handler._actor_task
    assert task is not None
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        session.close(CloseCode.GOING_AWAY, "server shutting down")
        task.cancel()
        raise
    # The actor may have died before its on_stop ran (on_start raised, a tell failed).
    await handler._run_on_stop()
    return handler.failure
