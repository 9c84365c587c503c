"""The capsules aiowt parses itself (aioquic hands them over as raw CONNECT-stream data)."""

from __future__ import annotations

from dataclasses import dataclass

from aioquic._buffer import Buffer, BufferReadError
from aioquic.buffer import encode_uint_var

from .errors import PeerError

__all__ = [
    "CLOSE_WEBTRANSPORT_SESSION",
    "DRAIN_WEBTRANSPORT_SESSION",
    "MAX_CAPSULE_SIZE",
    "Capsule",
    "CapsuleDecoder",
    "CloseSession",
    "DrainSession",
    "encode_close",
    "encode_drain",
]

CLOSE_WEBTRANSPORT_SESSION = 0x2843
DRAIN_WEBTRANSPORT_SESSION = 0x78AE
MAX_CAPSULE_SIZE = 16 * 1024
"""Larger capsules are a protocol error: the only ones we expect are tiny."""
MAX_REASON_BYTES = 1024
"""The draft caps the close reason at 1024 bytes of UTF-8."""


@dataclass(frozen=True, slots=True)
class CloseSession:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class DrainSession:
    pass


@dataclass(frozen=True, slots=True)
class Capsule:
    """Any other capsule: ignored by the session, but surfaced for completeness."""

    type: int
    value: bytes


def encode_close(code: int, reason: str) -> bytes:
    """A CLOSE_WEBTRANSPORT_SESSION capsule; the reason is cut at a UTF-8 boundary."""
    raw = reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    value = (code & 0xFFFFFFFF).to_bytes(4, "big") + raw
    return encode_uint_var(CLOSE_WEBTRANSPORT_SESSION) + encode_uint_var(len(value)) + value


def encode_drain() -> bytes:
    return encode_uint_var(DRAIN_WEBTRANSPORT_SESSION) + encode_uint_var(0)


class CapsuleDecoder:
    """Incremental capsule parser for the CONNECT stream's data."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[CloseSession | DrainSession | Capsule]:
        """Parse every complete capsule in `data` plus what was buffered.

        Raises `PeerError` for a capsule above `MAX_CAPSULE_SIZE` or a malformed close.
        """
        data = self._buffer + data
        capsules: list[CloseSession | DrainSession | Capsule] = []
        # One parse position and one slice at the end: slicing after every capsule would
        # make a burst of tiny capsules quadratic.
        buf = Buffer(data=data)
        consumed = 0
        try:
            while consumed < len(data):
                try:
                    capsule_type = buf.pull_uint_var()
                    length = buf.pull_uint_var()
                except BufferReadError:
                    break
                if length > MAX_CAPSULE_SIZE:
                    raise PeerError(f"capsule of {length} bytes is too large")
                start = buf.tell()
                if len(data) - start < length:
                    break
                capsules.append(_decode(capsule_type, data[start : start + length]))
                consumed = start + length
                buf.seek(consumed)
        finally:
            self._buffer = data[consumed:]
        return capsules

    @property
    def pending(self) -> int:
        """Bytes of an incomplete capsule still buffered."""
        return len(self._buffer)


def _decode(capsule_type: int, value: bytes) -> CloseSession | DrainSession | Capsule:
    if capsule_type == CLOSE_WEBTRANSPORT_SESSION:
        if len(value) < 4 or len(value) - 4 > MAX_REASON_BYTES:
            raise PeerError("malformed CLOSE_WEBTRANSPORT_SESSION capsule")
        try:
            reason = value[4:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PeerError("close reason is not UTF-8") from exc
        return CloseSession(int.from_bytes(value[:4], "big"), reason)
    if capsule_type == DRAIN_WEBTRANSPORT_SESSION:
        return DrainSession()
    return Capsule(capsule_type, value)
