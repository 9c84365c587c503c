"""`SessionContext`: the typed state of one session, from CONNECT to close."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from .request import ConnectRequest

if TYPE_CHECKING:
    from .session import Session, SessionTap

__all__ = ["CloseInfo", "Key", "SessionContext"]

T = TypeVar("T")
D = TypeVar("D")

_MISSING: Any = object()


class Key(Generic[T]):
    """A typed key for extension values in a `SessionContext`.

    Identity, not the name, makes a key: two keys with the same name never collide.
    The name is for `repr` and logs only.
    """

    __slots__ = ("_default", "name")

    def __init__(self, name: str, default: T = _MISSING) -> None:
        self.name = name
        self._default = default

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a session ended: the application code and reason, and who closed it."""

    code: int
    reason: str
    by_peer: bool


@dataclass(eq=False)
class SessionContext:
    """Everything known about one session, typed.

    Middleware read the request through it, set the identity and ids, add response
    headers before the session is accepted, and attach taps that see the session's
    traffic. It lives for the whole session; nothing in it is shared with another one.
    """

    request: ConnectRequest
    route_pattern: str = ""
    path_params: Mapping[str, str] = field(default_factory=dict)
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    request_id: str | None = None
    identity: object | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    taps: list[SessionTap] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    """`time.monotonic()` when the CONNECT arrived."""
    accepted_at: float | None = None
    status: int | None = None
    """The CONNECT response status, once one was sent."""
    session: Session | None = None
    """The transport session, once accepted."""
    close_info: CloseInfo | None = None
    """Set when the session has ended."""
    _values: dict[Key[Any], Any] = field(default_factory=dict, repr=False)

    # --- the request, flattened for convenience -------------------------------------
    @property
    def method(self) -> str:
        return self.request.method

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def authority(self) -> str:
        return self.request.authority

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self.request.headers

    @property
    def transport(self) -> str:
        """``webtransport`` (HTTP/3) or ``websocket``: what carries this session."""
        return self.request.transport

    @property
    def origin(self) -> str | None:
        return self.request.origin

    @property
    def user_agent(self) -> str | None:
        return self.request.user_agent

    @property
    def query(self) -> dict[str, list[str]]:
        return self.request.query

    @property
    def remote_addr(self) -> tuple[str, int]:
        return self.request.remote_addr

    @property
    def remote_ip(self) -> str:
        return self.request.remote_ip

    @property
    def ids(self) -> dict[str, str]:
        """The ids every log line of this session carries."""
        return {
            "session_id": self.session_id,
            "request_id": self.request_id or self.session_id,
            "remote_addr": f"{self.remote_addr[0]}:{self.remote_addr[1]}",
            "path": self.request.path,
        }

    # --- typed extension values -------------------------------------------------------
    @overload
    def get(self, key: Key[T]) -> T: ...
    @overload
    def get(self, key: Key[T], default: D) -> T | D: ...
    def get(self, key: Key[T], default: Any = _MISSING) -> Any:
        """The value for `key`; its default, or `default`, when unset; else `KeyError`."""
        if key in self._values:
            return cast(T, self._values[key])
        if default is not _MISSING:
            return default
        if key._default is not _MISSING:
            return key._default
        raise KeyError(key)

    def set(self, key: Key[T], value: T) -> None:
        self._values[key] = value

    def __contains__(self, key: Key[Any]) -> bool:
        return key in self._values

    def add_response_header(self, name: str, value: str) -> None:
        """Add a header to the CONNECT response (only before the session is accepted)."""
        self.response_headers.append((name.lower(), value))
