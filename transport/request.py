"""The extended CONNECT request as the transport received it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

__all__ = ["ConnectRequest"]


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
        """Query parameters; malformed pairs are kept as blank values, never raise."""
        result: dict[str, list[str]] = {}
        for key, value in parse_qsl(self.query_string, keep_blank_values=True):
            result.setdefault(key, []).append(value)
        return result

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
