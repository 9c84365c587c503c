"""`RateLimitRegistry`: concurrent sessions per key, every session cap's one counter.

A cap is a set of slots under a `(scope, key)`: per client IP (`RateLimit`, scope
``"ip"``), per route pattern (``"route"``), per resolved path (``"path"``), server-wide
(`MaxSessions`, ``"sessions"`` with an empty key). A server's limits count under
scopes that name their place (``"ip@use[0]"``), so two limits never share a count by
accident.

Counts are kept as the set of holders (session ids) per `(scope, key)`, not as a bare
number, which makes both directions exact and idempotent: a session that acquires twice
holds one slot, and a release from a session that holds nothing is a no-op, so a count
can never go negative or drift. Empty entries are deleted, so memory follows the live
sessions, not every IP ever seen.

`AcquireAll` is admission: every cap a session's route has, checked and taken in one
message, or none of them. Where the slots live is the registry's `SlotStore`: this
process (`LocalSlots`, the default) or a store shared by several processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from aiowt.transport.errors import UsageError

from ._runtime import Later
from ._service import Request, Service, handles

__all__ = [
    "Acquire",
    "AcquireAll",
    "Claim",
    "CountHolders",
    "HolderCounts",
    "LocalSlots",
    "RateLimitRegistry",
    "Release",
    "ReleaseAll",
    "SlotStore",
]


@dataclass(frozen=True, slots=True)
class Claim:
    """A slot under `(scope, key)`, wanted while fewer than `limit` are held there."""

    scope: str
    key: str
    limit: int


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcquireAll(Request["int | None"]):
    """Ask for a slot for `holder` under every claim, all or none.

    Replies None when `holder` holds every slot afterwards (a slot it already held
    counts), else the index of the first claim whose limit is reached; then nothing is
    taken.
    """

    holder: str
    claims: tuple[Claim, ...]


@dataclass(frozen=True, slots=True)
class ReleaseAll(Request[int]):
    """`holder` gives back its slots under the claims' `(scope, key)`s; replies how many
    it held. Usually told, not asked. Releasing a slot never acquired changes nothing."""

    holder: str
    claims: tuple[Claim, ...]


@dataclass(frozen=True, slots=True)
class Acquire(Request[bool]):
    """Ask for a slot for `holder` under `(scope, key)`, if fewer than `limit` are held.

    Replies True when `holder` holds a slot afterwards (including when it already did),
    False when the limit is reached. (`AcquireAll` with one claim.)
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


# --- where the slots live -----------------------------------------------------------------


class SlotStore(Protocol):
    """The state behind a `RateLimitRegistry`. Every call gets validated arguments.

    A store whose calls wait on something outside (a round trip) sets `overlapping`:
    the registry then goes on with its next messages while one waits, and the store
    keeps its calls in the order they were made (its first step, before any await,
    fixes the order).
    """

    overlapping: bool

    async def acquire(self, holder: str, claims: Sequence[Claim]) -> int | None:
        """Take a slot under every claim, or none: None, or the first refused index."""

    async def release(self, holder: str, claims: Sequence[Claim]) -> int:
        """Give back `holder`'s slots under the claims; how many it held."""

    async def count(self, scope: str, key: str) -> int:
        """Slots held under `(scope, key)`."""

    async def counts(self) -> dict[str, dict[str, int]]:
        """Every non-zero count, {scope: {key: count}}."""

    async def close(self) -> None:
        """Let go of what the store holds (connections, tasks); the registry stopped."""


class LocalSlots:
    """Slots in this process: a set of holders per `(scope, key)`."""

    overlapping = False

    def __init__(self) -> None:
        self.holders: dict[tuple[str, str], set[str]] = {}

    def __repr__(self) -> str:
        return f"<LocalSlots keys={len(self.holders)}>"

    async def acquire(self, holder: str, claims: Sequence[Claim]) -> int | None:
        for index, claim in enumerate(claims):
            held = self.holders.get((claim.scope, claim.key))
            if held is not None and holder not in held and len(held) >= claim.limit:
                return index
        for claim in claims:
            self.holders.setdefault((claim.scope, claim.key), set()).add(holder)
        return None

    async def release(self, holder: str, claims: Sequence[Claim]) -> int:
        released = 0
        for claim in claims:
            slot = (claim.scope, claim.key)
            held = self.holders.get(slot)
            if held is None or holder not in held:
                continue
            held.discard(holder)
            released += 1
            if not held:
                del self.holders[slot]
        return released

    async def count(self, scope: str, key: str) -> int:
        held = self.holders.get((scope, key))
        return 0 if held is None else len(held)

    async def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for (scope, key), held in self.holders.items():
            counts.setdefault(scope, {})[key] = len(held)
        return counts

    async def close(self) -> None:
        pass


# --- the actor ----------------------------------------------------------------------------


class RateLimitRegistry(Service):
    """The actor that owns concurrent-session counts. Messages: `AcquireAll`,
    `ReleaseAll`, `Acquire`, `Release`, `CountHolders`, `HolderCounts`.

    Middleware pick the scope (`"ip"`, `"route"`, `"path"`, `"sessions"`); middleware
    that share a registry and a scope share its counts. `store` is where the slots live
    (default: `LocalSlots`, in this process).
    """

    def __init__(self, store: SlotStore | None = None) -> None:
        super().__init__()
        self.store: SlotStore = store if store is not None else LocalSlots()

    def __repr__(self) -> str:
        return f"<RateLimitRegistry {self.store!r}>"

    async def on_stop(self) -> None:  # type: ignore[override]
        await self.store.close()

    @handles(AcquireAll)
    def _acquire_all(self, message: AcquireAll) -> Any:
        holder, claims = _holder(message.holder), _claims(message.claims)
        return self._reply(self.store.acquire(holder, claims))

    @handles(ReleaseAll)
    def _release_all(self, message: ReleaseAll) -> Any:
        holder, claims = _holder(message.holder), _claims(message.claims, limits=False)
        return self._reply(self.store.release(holder, claims))

    @handles(Acquire)
    def _acquire(self, message: Acquire) -> Any:
        claim = Claim(message.scope, message.key, message.limit)
        holder, claims = _holder(message.holder), _claims((claim,))
        return self._reply(_is_none(self.store.acquire(holder, claims)))

    @handles(Release)
    def _release(self, message: Release) -> Any:
        claim = Claim(message.scope, message.key, 1)
        holder, claims = _holder(message.holder), _claims((claim,))
        return self._reply(_is_one(self.store.release(holder, claims)))

    def _reply(self, call: Coroutine[Any, Any, Any]) -> Any:
        """Awaited in turn (a local store: no wait), or `Later` (a store with round trips:
        started now, in message order, replying when done)."""
        if not self.store.overlapping:
            return call
        return Later(asyncio.ensure_future(call))

    @handles(CountHolders)
    async def _count(self, message: CountHolders) -> int:
        (claim,) = _claims((Claim(message.scope, message.key, 1),))
        return await self.store.count(claim.scope, claim.key)

    @handles(HolderCounts)
    async def _counts(self, message: HolderCounts) -> Mapping[str, Mapping[str, int]]:
        counts = await self.store.counts()
        return MappingProxyType({s: MappingProxyType(k) for s, k in counts.items()})


async def _is_none(refused: Awaitable[int | None]) -> bool:
    return await refused is None


async def _is_one(released: Awaitable[int]) -> bool:
    return await released == 1


def _holder(holder: object) -> str:
    if not isinstance(holder, str):
        raise UsageError(f"a holder is a str (a session id), got {holder!r}")
    return holder


def _claims(claims: object, *, limits: bool = True) -> tuple[Claim, ...]:
    if not isinstance(claims, tuple | list) or not all(isinstance(c, Claim) for c in claims):
        raise UsageError(f"claims must be a tuple of Claim, got {claims!r}")
    for claim in claims:
        if not (isinstance(claim.scope, str) and isinstance(claim.key, str)):
            raise UsageError(f"scope and key must be str, got {claim!r}")
        limit = claim.limit
        if limits and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise UsageError(f"limit must be a positive int, got {limit!r}")
    return tuple(claims)
