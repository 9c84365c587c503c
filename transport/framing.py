"""msgpack on the wire: one object per datagram, length-prefixed frames on streams.

A stream frame is a 4-byte big-endian length followed by that many bytes of msgpack
(easy to read with a `DataView` in a browser). Every size has a limit; anything
malformed or oversized raises `MalformedFrame` or `FrameTooLarge`, never something else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack

from .errors import FrameTooLarge, MalformedFrame, UsageError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FrameDecoder",
    "decode_message",
    "encode_frame",
    "encode_message",
]

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
_HEADER = 4


def encode_message(obj: Any) -> bytes:
    """msgpack-encode `obj`; a value msgpack cannot encode is a `UsageError`."""
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise UsageError(f"cannot encode message: {exc}") from exc


def decode_message(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Any:
    """Decode exactly one msgpack object from `data` (a datagram or a frame body)."""
    if len(data) > max_size:
        raise FrameTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except msgpack.ExtraData as exc:
        raise MalformedFrame("trailing bytes after the msgpack object") from exc
    except Exception as exc:
        # msgpack raises a zoo of types (ValueError, UnpackValueError, FormatError,
        # StackError, TypeError for unhashable map keys ...): all mean "malformed".
        raise MalformedFrame(f"malformed msgpack: {exc}") from exc


def encode_frame(obj: Any, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """One length-prefixed stream frame carrying `obj`."""
    body = encode_message(obj)
    if len(body) > max_size:
        raise UsageError(f"message of {len(body)} bytes exceeds the limit of {max_size}")
    return len(body).to_bytes(_HEADER, "big") + body


class FrameDecoder:
    """Incremental decoder of length-prefixed msgpack frames from one stream."""

    __slots__ = ("_buffer", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Every complete message in the bytes so far. Raises on the first bad frame."""
        return list(self.messages(data))

    def messages(self, data: bytes) -> Iterator[Any]:
        """Yield each complete message in the bytes so far, in order.

        A bad frame raises only after every good frame before it was yielded, so what
        a handler sees does not depend on how the peer's bytes were cut into packets.
        """
        self._buffer += data
        buffer = self._buffer
        offset = 0
        try:
            while len(buffer) - offset >= _HEADER:
                length = int.from_bytes(buffer[offset : offset + _HEADER], "big")
                if length > self.max_size:
                    raise FrameTooLarge(f"frame of {length} bytes exceeds {self.max_size}")
                end = offset + _HEADER + length
                if len(buffer) < end:
                    break
                body = bytes(buffer[offset + _HEADER : end])
                offset = end
                yield decode_message(body, max_size=self.max_size)
        finally:
            if offset:
                del buffer[:offset]

    def close(self) -> None:
        """The stream ended: a partial frame left over is malformed."""
        if self._buffer:
            size = len(self._buffer)
            self._buffer.clear()
            raise MalformedFrame(f"stream ended inside a frame ({size} bytes left over)")
