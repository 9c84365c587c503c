"""Compression of messages: gzip and deflate (stdlib ``zlib``), with a hard size limit.

The wire convention
-------------------
- **Negotiation, per session.** The client offers codecs in the ``wt-compress`` request
  header or the ``compress`` query parameter (``?compress=gzip``; browsers cannot set
  headers on a WebTransport CONNECT), comma-separated. `Compress` picks the first of
  its own codecs that the client offered and answers with ``wt-compress: <codec>`` on
  the CONNECT response. No answer header: nothing is compressed on this session.
- **Messages.** A compressed message is a msgpack *extension* value: type
  `GZIP_EXT` (``0x47``) or `DEFLATE_EXT` (``0x44``), whose data is the compressed
  msgpack encoding of the real message. It travels wherever a message can (a datagram,
  a stream frame), so framing and size limits are unchanged, and either side may send
  small messages uncompressed (compression only pays above a few hundred bytes).
  ``deflate`` is the zlib format (RFC 1950), as in HTTP and the browser's
  ``CompressionStream("deflate")``; ``gzip`` is RFC 1952.
- **The limit.** Decompression stops at `Compressor.max_size` bytes of output: more is
  `FrameTooLarge` (the session is closed with ``MESSAGE_TOO_LARGE``), never a memory
  blow-up. Corrupt, truncated or trailing data is `MalformedFrame`.

In a handler
------------
`Compress` puts the session's `Compressor` in `COMPRESSOR` (when nothing was negotiated
the key's default, `IDENTITY`, passes messages through unchanged, so handler code is
the same either way)::

    async def on_message(self, message, stream):
        codec = self.ctx.get(COMPRESSOR)
        message = codec.unwrap(message)         # decompressed (or as it was)
        self.send_message(codec.wrap(reply))    # compressed if large enough

`unwrap` raises the peer errors above inside the hook, where the `Handler` turns them
into a close with their code. A Python client uses the same class:
``Compressor("gzip").wrap(...)``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Final

import msgpack

from aiowt.transport import (
    FrameTooLarge,
    Key,
    MalformedFrame,
    Rejected,
    SessionContext,
    UsageError,
)
from aiowt.transport.framing import DEFAULT_MAX_MESSAGE_SIZE, decode_message, encode_message

from .chain import CallNext

__all__ = [
    "CODECS",
    "COMPRESSOR",
    "COMPRESS_HEADER",
    "COMPRESS_PARAM",
    "DEFLATE_EXT",
    "GZIP_EXT",
    "IDENTITY",
    "Compress",
    "Compressor",
]

GZIP_EXT: Final = 0x47
"""msgpack extension type of a gzip-compressed message ("G")."""
DEFLATE_EXT: Final = 0x44
"""msgpack extension type of a deflate-compressed (zlib format) message ("D")."""

_CODECS: Final[dict[str, tuple[int, int]]] = {
    # codec -> (msgpack ext type, zlib wbits)
    "gzip": (GZIP_EXT, 16 + zlib.MAX_WBITS),
    "deflate": (DEFLATE_EXT, zlib.MAX_WBITS),
}
CODECS: Final = tuple(_CODECS)
"""The codecs there are: ``("gzip", "deflate")``."""

COMPRESS_HEADER: Final = "wt-compress"
"""Request header offering codecs; response header naming the chosen one."""
COMPRESS_PARAM: Final = "compress"
"""Query parameter offering codecs (for browsers, which cannot set request headers)."""


class Compressor:
    """One codec with its limits: compresses and decompresses bytes and messages.

    `codec` is ``"gzip"``, ``"deflate"``, or None for the identity (no compression).
    `level` is zlib's (1 fastest … 9 smallest); `min_size` is the encoded size below
    which `wrap` leaves a message as it is; `max_size` is the hard limit on
    decompressed bytes.
    """

    __slots__ = ("_ext", "_wbits", "codec", "level", "max_size", "min_size")

    def __init__(
        self,
        codec: str | None,
        *,
        level: int = 6,
        min_size: int = 256,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if codec is not None and codec not in _CODECS:
            raise UsageError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            raise UsageError(f"level must be an int from 0 to 9, got {level!r}")
        for name, value in (("min_size", min_size), ("max_size", max_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{name} must be an int >= 0, got {value!r}")
        if max_size < 1:
            raise UsageError("max_size must be at least 1 byte")
        self.codec = codec
        self.level = level
        self.min_size = min_size
        self.max_size = max_size
        self._ext, self._wbits = _CODECS[codec] if codec is not None else (-1, 0)

    def __repr__(self) -> str:
        if self.codec is None:
            return "Compressor(None)"
        return (
            f"Compressor({self.codec!r}, level={self.level}, min_size={self.min_size}, "
            f"max_size={self.max_size})"
        )

    @property
    def name(self) -> str:
        """The codec's name; ``"identity"`` for no compression."""
        return self.codec or "identity"

    # --- bytes -----------------------------------------------------------------------------------
    def compress(self, data: bytes) -> bytes:
        """`data` compressed with this codec (unchanged for the identity)."""
        if self.codec is None:
            return data
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, self._wbits)
        return compressor.compress(data) + compressor.flush()

    def decompress(self, data: bytes) -> bytes:
        """`data` decompressed; `FrameTooLarge` past `max_size`, `MalformedFrame` if corrupt."""
        if self.codec is None:
            return data
        inflater = zlib.decompressobj(self._wbits)
        try:
            # max_length bounds the output: a bomb stops here, one byte past the limit.
            out = inflater.decompress(data, self.max_size + 1)
        except zlib.error as exc:
            raise MalformedFrame(f"corrupt {self.codec} data: {exc}") from None
        if len(out) > self.max_size:
            raise FrameTooLarge(
                f"{self.codec} message decompresses to more than {self.max_size} bytes"
            )
        if not inflater.eof:
            raise MalformedFrame(f"truncated {self.codec} data")
        if inflater.unused_data:
            raise MalformedFrame(f"trailing bytes after the {self.codec} data")
        return out

    # --- messages --------------------------------------------------------------------------------
    def wrap(self, message: Any) -> Any:
        """`message` as a compressed msgpack extension value, if that makes it smaller.

        Messages that encode to fewer than `min_size` bytes, or that do not shrink, are
        returned unchanged (and sent as plain msgpack).
        """
        if self.codec is None:
            return message
        body = encode_message(message)
        if len(body) < self.min_size:
            return message
        packed = self.compress(body)
        if len(packed) >= len(body):
            return message
        return msgpack.ExtType(self._ext, packed)

    def unwrap(self, message: Any) -> Any:
        """A received message, decompressed and decoded if it is this codec's extension.

        Anything else is returned unchanged. An extension of the *other* codec is
        `MalformedFrame` (the session negotiated this one); the identity passes every
        message through.
        """
        if self.codec is None or not isinstance(message, msgpack.ExtType):
            return message
        if message.code == self._ext:
            return decode_message(self.decompress(message.data), max_size=self.max_size)
        if message.code in (GZIP_EXT, DEFLATE_EXT):
            raise MalformedFrame(f"message compressed with another codec than {self.codec}")
        return message


IDENTITY: Final = Compressor(None)
"""The compressor of a session that negotiated no compression: passes everything through."""

COMPRESSOR: Key[Compressor] = Key("aiowt.compressor", IDENTITY)
"""The session's `Compressor`, set by `Compress`; `IDENTITY` when none was negotiated."""


def _offers(ctx: SessionContext) -> list[str]:
    values = ctx.request.header_values(COMPRESS_HEADER) + ctx.query.get(COMPRESS_PARAM, [])
    return [name.strip().lower() for value in values for name in value.split(",")]


class Compress:
    """Negotiate a message codec per session and publish its `Compressor` (seed 000).

    `codec` is one codec or several in order of preference (``("gzip", "deflate")``).
    With `required`, a client that offers none of them is refused with 400; otherwise
    its session goes on uncompressed. See the module docstring for the wire convention.
    """

    def __init__(
        self,
        codec: str | Sequence[str] = "gzip",
        *,
        level: int = 6,
        min_size: int = 256,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        required: bool = False,
    ) -> None:
        codecs = (codec,) if isinstance(codec, str) else tuple(codec)
        if not codecs:
            raise UsageError("give at least one codec")
        # Build each once: validates the options, and the instances are immutable in use.
        self._compressors = {
            name: Compressor(name, level=level, min_size=min_size, max_size=max_size)
            for name in codecs
        }
        self.codecs = codecs
        self.required = required

    def __repr__(self) -> str:
        sample = next(iter(self._compressors.values()))
        codecs = self.codecs[0] if len(self.codecs) == 1 else self.codecs
        return (
            f"Compress({codecs!r}, level={sample.level}, min_size={sample.min_size}, "
            f"max_size={sample.max_size}, required={self.required})"
        )

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        offered = _offers(ctx)
        chosen = next((name for name in self.codecs if name in offered), None)
        if chosen is not None:
            ctx.set(COMPRESSOR, self._compressors[chosen])
            ctx.add_response_header(COMPRESS_HEADER, chosen)
        elif self.required:
            raise Rejected(400, f"compression required: offer one of {', '.join(self.codecs)}")
        await call_next(ctx)
