"""`ConnectionLimits`: what one QUIC connection may hold, whoever is on the other end.

The per-message limits (`max_message_size`, `send_buffer_high`) are per session and
set on `Server`; these bound a connection before and around its sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import UsageError

__all__ = ["ConnectionLimits"]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Bounds on one connection; the defaults are safe for the open internet."""

    max_header_bytes: int = 16 * 1024
    """A CONNECT header block larger than this (names plus values) is answered 431."""
    max_sessions: int = 64
    """Sessions open or awaiting their verdict on one connection; more are answered 429.
    Advertised to the client as WT_MAX_SESSIONS."""
    idle_timeout: float = 10.0
    """Server side: a connection with no session for this long is closed, so a peer that
    completes QUIC and never sends CONNECT (or lingers after its last session) holds
    nothing for longer."""
    max_pending_datagrams: int = 1024
    """aioquic's outbound datagram queue never drops: past this many unsent, new
    datagrams are dropped (and counted in `Session.datagrams_dropped_out`)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"{field.name} must be a positive number, got {value!r}")
