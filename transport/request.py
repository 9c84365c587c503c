"""The extended CONNECT request as the transport received it, and its query string."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .errors import MalformedQuery

__all__ = ["ConnectRequest", "parse_query"]

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_query(
    query_string: str, *, strict: bool = True, max_fields: int = 256
) -> dict[str, tuple[str, ...]]:
    """Decode a query string: name → every value, in order.

    Strict (the default) refuses, with `MalformedQuery`, what a browser never produces
    and a credential must not be guessed from: a ``%`` not followed by two hex digits,
    percent-escapes that decode to invalid UTF-8, more than `max_fields` fields.
    Lenient (``strict=False``) never raises: bad escapes and bytes are kept as they
    come or replaced, and there is no field limit.
    """
    if not strict:
        pairs = parse_qsl(query_string, keep_blank_values=True)
    else:
        if _BAD_ESCAPE.search(query_string):
            raise MalformedQuery("invalid percent-escape")
        try:
            pairs = parse_qsl(
                query_string, keep_blank_values=True, errors="strict", max_num_fields=max_fields
            )
        except UnicodeDecodeError:
            raise MalformedQuery("percent-escapes are not UTF-8") from None
        except ValueError:
            raise MalformedQuery(f"more than {max_fields} fields") from None
    result: dict[str, list[str]] = {}
    for name, value in pairs:
        result.setdefault(name, []).append(value)
    return {name: tuple(values) for name, values in result.items()}


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """An HTTP/3 extended CONNECT request, decoded and validated.

    Header names are lower-case; values are decoded as UTF-8 (invalid bytes are a
    400 before this object exists). `path` excludes the query string.
    """

    method: str
    scheme: str
    authority: str
    path: str
    query_string: str
    protocol: str
    headers: tuple[tuple[str, str], ...]
    remote_addr: tuple[str, int]

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive), or `default`."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return default

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name`, in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    @property
    def query(self) -> dict[str, list[str]]:
        """Query parameters, decoded leniently (`parse_query` with ``strict=False``)."""
        return {k: list(v) for k, v in parse_query(self.query_string, strict=False).items()}

    @property
    def transport(self) -> str:
        """``websocket`` for a WebSocket upgrade, else ``webtransport`` (HTTP/3)."""
        return "websocket" if self.protocol == "websocket" else "webtransport"

    @property
    def origin(self) -> str | None:
        return self.header("origin")

    @property
    def user_agent(self) -> str | None:
        return self.header("user-agent")

    @property
    def remote_ip(self) -> str:
        """The peer's IP without port; IPv4-mapped IPv6 addresses are unmapped."""
        host = self.remote_addr[0]
        if host.startswith("::ffff:") and "." in host:
            return host[7:]
        return host
