"""The tests' `redis-server`: `aiowt.redis_server.RedisServer`, a fresh key prefix per URL.

`make test` installs Debian's redis-server; where it is missing the Redis tests skip
(and fail on CI, which must have it). Tests share one server per session and keep apart
by key prefix; a test that stops or restarts Redis starts one of its own.
"""

from __future__ import annotations

import os
import uuid

import pytest

from aiowt.redis_server import RedisServer as _RedisServer

__all__ = ["RedisServer"]


class RedisServer(_RedisServer):
    def url(self, **options: object) -> str:
        """A backend URL for this server, with a fresh prefix unless one is given."""
        options.setdefault("prefix", f"t{uuid.uuid4().hex[:12]}")
        return super().url(**options)

    def start(self, timeout: float = 10.0) -> None:
        try:
            super().start(timeout)
        except FileNotFoundError:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed: `make test` installs it on Debian")
            pytest.skip("redis-server is not installed (make test installs it)")
