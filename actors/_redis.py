"""What the Redis-backed services share: the import guard, what "unreachable" means,
and how long to wait before trying again."""

from __future__ import annotations

import random

try:
    from redis.asyncio import Redis, from_url
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as error:  # pragma: no cover - the extra is installed for the tests
    raise ImportError("the Redis backend needs redis-py: pip install 'aiowt[redis]'") from error

__all__ = ["UNREACHABLE", "Redis", "backoff", "from_url"]

UNREACHABLE = (TimeoutError, OSError, RedisConnectionError, RedisTimeoutError)
"""What says Redis cannot be reached now; anything else is a bug, and raised."""


def backoff(failures: int, cap: float) -> float:
    """Seconds before the next try after `failures` in a row: doubling from 0.1 s up to
    `cap`, jittered by half either way so processes that lost Redis together do not
    come back together."""
    delay: float = min(cap, 0.05 * 2 ** min(failures, 16))
    return delay * random.uniform(0.5, 1.5)
