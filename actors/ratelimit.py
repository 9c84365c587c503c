"""`RateLimitRegistry`: concurrent sessions per key (client IP, route pattern, resolved path).

Counts are kept as the set of holders (session ids) per `(scope, key)`, not as a bare
number, which makes both directions exact and idempotent: a session that acquires twice
holds one slot, and a release from a session that holds nothing is a no-op, so a count
can never go negative or drift. Empty entries are deleted, so memory follows the live
sessions, not every IP ever seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from aiowt.transport.errors import UsageError

from ._service import Request, Service, handles

__all__ = ["Acquire", "CountHolders", "HolderCounts", "RateLimitRegistry", "Release"]


@dataclass(frozen=True, slots=True)
class Acquire(Request[bool]):
    """Ask for a slot for `holder` under `(scope, key)`, if fewer than `limit` are held.

    Replies True when `holder` holds a slot afterwards (including when it already did),
    False when the limit is reached.
    """

    scope: str
    key: str
    holder: str
    limit: int


@dataclass(frozen=True, slots=True)
class Release(Request[bool]):
    """`holder` gives its slot under `(scope, key)` back; True if it held one.

    Usually told, not asked. Releasing a slot never acquired changes nothing.
    """

    scope: str
    key: str
    holder: str


@dataclass(frozen=True, slots=True)
class CountHolders(Request[int]):
    """Ask how many slots are held under `(scope, key)`."""

    scope: str
    key: str


@dataclass(frozen=True, slots=True)
class HolderCounts(Request[Mapping[str, Mapping[str, int]]]):
    """Ask for every non-zero count, as read-only {scope: {key: count}}."""


class RateLimitRegistry(Service):
    """The actor that owns concurrent-session counts. Messages: `Acquire`, `Release`,
    `CountHolders`, `HolderCounts`.

    Middleware pick the scope (`"ip"`, `"route"`, `"path"`); middleware that share a
    registry and a scope share its counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self._holders: dict[tuple[str, str], set[str]] = {}

    def __repr__(self) -> str:
        return f"<RateLimitRegistry keys={len(self._holders)}>"

    @handles(Acquire)
    def _acquire(self, message: Acquire) -> bool:
        slot = _slot(message.scope, message.key, message.holder)
        limit = message.limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"limit must be a positive int, got {limit!r}")
        holders = self._holders.get(slot)
        if holders is None:
            self._holders[slot] = {message.holder}
            return True
        if message.holder in holders:
            return True
        if len(holders) >= limit:
            return False
        holders.add(message.holder)
        return True

    @handles(Release)
    def _release(self, message: Release) -> bool:
        slot = _slot(message.scope, message.key, message.holder)
        holders = self._holders.get(slot)
        if holders is None or message.holder not in holders:
            return False
        holders.discard(message.holder)
        if not holders:
            del self._holders[slot]
        return True

    @handles(CountHolders)
    def _count(self, message: CountHolders) -> int:
        holders = self._holders.get(_slot(message.scope, message.key, ""))
        return 0 if holders is None else len(holders)

    @handles(HolderCounts)
    def _counts(self, message: HolderCounts) -> Mapping[str, Mapping[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for (scope, key), holders in self._holders.items():
            counts.setdefault(scope, {})[key] = len(holders)
        return MappingProxyType({s: MappingProxyType(k) for s, k in counts.items()})


def _slot(scope: object, key: object, holder: object) -> tuple[str, str]:
    if not (isinstance(scope, str) and isinstance(key, str) and isinstance(holder, str)):
        raise UsageError(f"scope, key and holder must be str, got {(scope, key, holder)!r}")
    return scope, key
