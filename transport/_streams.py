"""What a session's carrier does alike over QUIC and over a WebSocket: hand stream bytes
to the session, forget a stream once both its sides are done, wake writers waiting in
`Stream.drain()`. `WebTransportConnection` and `MuxConnection` each keep their own
stream table and say how to forget a stream and how much one has unsent."""

from __future__ import annotations

from . import events
from .codes import StreamErrorCode
from .session import Stream

__all__ = ["StreamBookkeeping"]


class StreamBookkeeping:
    """Mixed into a carrier, which provides `send_buffer_size` and `_forget_stream`."""

    _drain_watch: set[Stream]

    def send_buffer_size(self, stream: Stream) -> int:
        raise NotImplementedError

    def _forget_stream(self, stream: Stream) -> None:
        raise NotImplementedError

    def watch_drain(self, stream: Stream) -> None:
        self._drain_watch.add(stream)

    def _check_drain(self) -> None:
        for stream in list(self._drain_watch):
            if (
                self.send_buffer_size(stream) <= stream.session.send_buffer_low
                or not stream._send_open
            ):
                self._drain_watch.discard(stream)
                stream._wake_drain()

    def _maybe_forget(self, stream: Stream) -> None:
        if not stream.recv_open and not stream._send_open:
            self._forget_stream(stream)

    def _deliver(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        """The peer's bytes to the session; a tap's veto resets and stops the stream."""
        if not stream.recv_open:
            return
        if not stream.session._emit(events.StreamDataReceived(stream, data, end_stream)):
            stream.reset(StreamErrorCode.REFUSED)
            stream.stop(StreamErrorCode.REFUSED)
            self._maybe_forget(stream)
            return
        if end_stream:
            stream.recv_open = False
            self._maybe_forget(stream)
