"""Backends: where a server's shared services keep their state.

The services answer the same messages whatever the backend; only where their state
lives changes:

- `InProcess` (the default, ``memory:``): in this process. Exact within one process.
- `aiowt.actors.redis_backend.RedisBackend` (``redis://``, ``rediss://``, ``unix://``):
  in a Redis server shared by every process and machine that names it, so the session
  limits are exact cluster-wide. Needs the ``redis`` extra.

`backend_from_url` turns the command line's ``--backend URL`` into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol
from urllib.parse import urlsplit

from aiowt.transport.errors import UsageError

from .services import Services

__all__ = ["Backend", "InProcess", "backend_from_url"]


class Backend(Protocol):
    """Starts a server's `Services` on the running event loop."""

    def start(self) -> Services:
        """The services, started; `Services.stop()` stops them and what they hold."""

    @property
    def location(self) -> str:
        """Where the state lives, for logs and banners (no password shown)."""


@dataclass(frozen=True)
class InProcess:
    """Every service keeps its state in this process."""

    location: ClassVar[str] = "memory:"

    def start(self) -> Services:
        return Services.start()


def backend_from_url(url: str) -> Backend:
    """The backend a URL names: ``memory:`` (or empty), or a Redis URL.

    Redis URLs: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` for TLS,
    ``unix:///path/to/redis.sock[?db=N]``; options as query parameters (``prefix``,
    ``lease``, ``timeout``, ``failure``, ``processes``; see `RedisBackend`).
    """
    scheme = urlsplit(url).scheme if url else "memory"
    if scheme == "memory":
        return InProcess()
    if scheme in ("redis", "rediss", "unix"):
        from .redis_backend import RedisBackend

        return RedisBackend.from_url(url)
    raise UsageError(f"--backend takes memory:, redis://, rediss:// or unix:// URLs, got {url!r}")
