"""`ConnectionLimits`: what one QUIC connection may hold, whoever is on the other end.

The per-message limits (`max_message_size`, `send_buffer_high`) are per session and
set on `Server`; these bound a connection before and around its sessions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["ConnectionLimits"]


@dataclass(frozen=True, slots=True, init=False)
class ConnectionLimits:
    """Bounds on one connection; the defaults are safe for the open internet."""

    max_header_bytes: int
    """A CONNECT header block larger than this (names plus values) is answered 431."""
    max_sessions_per_connection: int
    """Sessions open or awaiting their verdict on one connection; more are answered 429.
    Advertised to the client as WT_MAX_SESSIONS. (The server-wide cap is the
    `MaxSessions` middleware.)"""
    idle_timeout: float
    """Server side: a connection with no session for this long is closed, so a peer that
    completes QUIC and never sends CONNECT (or lingers after its last session) holds
    nothing for longer."""
    max_pending_datagrams: int
    """aioquic's outbound datagram queue never drops: past this many unsent, new
    datagrams are dropped (and counted in `Session.datagrams_dropped_out`)."""

    def __init__(
        self,
        *,
        max_header_bytes: int = 16 * 1024,
        max_sessions_per_connection: int = 64,
        idle_timeout: float = 10.0,
        max_pending_datagrams: int = 1024,
        max_sessions: int | None = None,
    ) -> None:
        if max_sessions is not None:
            warnings.warn(
                "ConnectionLimits(max_sessions=...) is deprecated; it is"
                " max_sessions_per_connection (MaxSessions is the server-wide cap)",
                DeprecationWarning,
                stacklevel=2,
            )
            max_sessions_per_connection = max_sessions
        values = {
            "max_header_bytes": max_header_bytes,
            "max_sessions_per_connection": max_sessions_per_connection,
            "idle_timeout": idle_timeout,
            "max_pending_datagrams": max_pending_datagrams,
        }
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"{name} must be a positive number, got {value!r}")
            object.__setattr__(self, name, value)
