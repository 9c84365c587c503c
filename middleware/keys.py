"""The typed context keys the handshake middleware publish.

Handlers and later middleware read these with ``ctx.get(KEY)`` or
``ctx.get(KEY, default)``. The authenticated identity and the request id are not keys:
they have their own fields on `SessionContext` (``ctx.identity``, ``ctx.request_id``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from aiowt.transport.context import Key

__all__ = [
    "AUTH_SCHEME",
    "CLIENT_IP",
    "IPAddress",
    "ORIGIN",
    "QUERY",
    "REMOTE_USER",
    "SECRET_NAMES",
    "SUBPROTOCOL",
    "USER_AGENT",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
"""An IP address as `ipaddress` parses it (IPv4-mapped IPv6 is always unmapped)."""

AUTH_SCHEME: Key[str] = Key("aiowt.auth_scheme")
"""Which authenticator admitted the session: ``"bearer"``, ``"query"``, ``"key"``, ``"basic"``."""

REMOTE_USER: Key[str] = Key("aiowt.remote_user")
"""The user id `BasicAuth` authenticated (go-json-rest's ``REMOTE_USER``)."""

CLIENT_IP: Key[IPAddress] = Key("aiowt.client_ip")
"""The client's address as `ClientIP` resolved it (through trusted proxies only)."""

USER_AGENT: Key[str] = Key("aiowt.user_agent", "")
"""The ``user-agent`` header, set by `SessionData` (empty when the client sent none)."""

ORIGIN: Key[str | None] = Key("aiowt.origin", None)
"""The ``origin`` header, set by `SessionData` (``None`` when the client sent none)."""

QUERY: Key[Mapping[str, tuple[str, ...]]] = Key("aiowt.query")
"""The query parameters, strictly decoded by `SessionData`: name → every value, in order."""

SUBPROTOCOL: Key[str] = Key("aiowt.subprotocol")
"""The application protocol `Subprotocols` chose (also sent as ``wt-protocol``)."""

SECRET_NAMES: Key[frozenset[str]] = Key("aiowt.secret_names", frozenset())
"""Lower-cased query parameter and header names that carried a credential in this
request, added by the authenticators that read them (`QueryAuth`, `RequireKey`). The
access logs redact these on top of their own list, whatever the names are."""
