"""`RedisBackend`: the session limits of every process and machine, kept in one Redis.

A server on this backend counts its session limits in Redis (`RedisSlots`, the store of
its `RateLimitRegistry`), so `MaxSessions(k)` admits k sessions across every process
that names the same Redis and prefix, not k per process.

**Slots are leases.** A slot is a member of a sorted set (one per `(scope, key)`) whose
score is when its lease ends. Admission is one atomic script (`EVALSHA`): drop the
expired members of each set, check every claim, take all of them or none. A clean
release is immediate. One keeper per process renews this process's leases in batches,
every third of a lease, so a process that dies (SIGKILL, power loss) holds its slots for
at most one lease (`lease`, default 15 s) after its last renewal.

**Time** is Redis' own (`TIME` inside the scripts), one clock for every process.

**When Redis is unreachable** (an error, or no answer within `timeout`, default 50 ms),
the registry goes on by its `failure` policy, logs the change and reports it
(``aiowt_backend_connected``, ``aiowt_backend_state_changes_total``):

- ``"partition"`` (the default): each process admits by itself while it holds fewer than
  ``limit // processes`` slots of a key (its sessions admitted before the outage count),
  so N processes stay within the limit for what they admit meanwhile;
- ``"open"``: admit everything until Redis is back (what Envoy does by default);
- ``"closed"``: refuse everything until Redis is back.

The keeper retries with exponential backoff and jitter; once Redis answers, the process
writes back every slot it holds (a restarted Redis starts empty) and the counts
converge again. No session fails because Redis did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from pykka import ActorRef

from aiowt.transport.errors import UsageError

from ._redis import LUA_NOW, UNREACHABLE, Batcher, Redis, backoff, batcher_for, from_url
from ._service import tell_quietly
from .metric_names import BACKEND_CONNECTED, BACKEND_STATE_CHANGES
from .metrics import Inc, MetricsCollector, SetGauge
from .ratelimit import Claim, RateLimitRegistry
from .redis_bridge import RedisBridge
from .redis_rooms import RedisRooms
from .redis_sessions import SharedSessionRegistry
from .services import Services

__all__ = ["Failure", "RedisBackend", "RedisSlots"]

log = structlog.get_logger("aiowt.backend")

Failure = Literal["partition", "open", "closed"]
_FAILURES: tuple[Failure, ...] = ("partition", "open", "closed")

_ACQUIRE = (
    LUA_NOW
    + """
-- KEYS: one sorted set per claim. ARGV: now, lease (ms), holder, then each claim's limit.
local holder = ARGV[3]
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, holder)
      and redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    return i - 1
  end
end
local lease = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, holder)
  redis.call('PEXPIRE', key, 2 * lease)
end
return -1
"""
)

_RENEW = (
    LUA_NOW
    + """
-- KEYS: sorted sets, one per (key, holder) pair. ARGV: now, lease, 'XX' or 'ALL', holders.
local lease = tonumber(ARGV[2])
local renewed = 0
for i, key in ipairs(KEYS) do
  if ARGV[3] == 'XX' then
    renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', now + lease, ARGV[3 + i])
  else
    renewed = renewed + redis.call('ZADD', key, 'CH', now + lease, ARGV[3 + i])
  end
  redis.call('PEXPIRE', key, 2 * lease)
end
return renewed
"""
)

_RELEASE = """
-- KEYS: sorted sets. ARGV: the holder.
local released = 0
for _, key in ipairs(KEYS) do
  released = released + redis.call('ZREM', key, ARGV[1])
end
return released
"""

_COUNT = (
    LUA_NOW
    + """
-- KEYS: sorted sets. Replies the live members of each.
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf')
end
return counts
"""
)

_RENEW_BATCH = 500
"""(key, holder) pairs per renewal script: a long script would stall Redis for others."""


class RedisSlots:
    """A `SlotStore` in Redis, shared by every process with the same `prefix`.

    `clock` (milliseconds) replaces Redis' clock in the scripts, for tests that move
    time by hand; leave it None in production. With a clock, no keeper runs: the test
    renews (`renew()`) when its clock says so.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "aiowt",
        lease: float = 15.0,
        timeout: float = 0.05,
        failure: Failure = "partition",
        processes: int = 1,
        metrics: ActorRef[MetricsCollector] | None = None,
        clock: Callable[[], int] | None = None,
        max_backoff: float = 5.0,
        batcher: Batcher | None = None,
    ) -> None:
        """`batcher` sends the scripts (one shared by the backend's services); without
        one, the store makes its own on `client` and closes it with itself."""
        self._client = client
        self._batcher, self._own_batcher = batcher_for(client, batcher)
        self.prefix = prefix
        self.lease = lease
        self.timeout = timeout
        self.failure: Failure = failure
        self.processes = processes
        self._metrics = metrics
        self._clock = clock
        self._max_backoff = max_backoff
        self._acquire_script = self._batcher.register_script(_ACQUIRE)
        self._renew_script = self._batcher.register_script(_RENEW)
        self._release_script = self._batcher.register_script(_RELEASE)
        self._count_script = self._batcher.register_script(_COUNT)
        self.held: dict[str, set[str]] = {}
        """Redis key -> the holders of this process with a lease there (kept renewed)."""
        self.local: dict[str, set[str]] = {}
        """Redis key -> holders admitted while Redis was unreachable (written back later)."""
        self.connected = True
        self._acquiring: dict[str, int] = {}
        """Holders with an acquisition waiting on Redis, and how many."""
        self._released_meanwhile: set[str] = set()
        self._failures = 0
        self._retry_at = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self._wake_keeper = asyncio.Event()

    overlapping = True
    """Each call waits for a round trip; the registry goes on meanwhile (`SlotStore`)."""

    def __repr__(self) -> str:
        state = "connected" if self.connected else f"unreachable, {self.failure}"
        return f"<RedisSlots prefix={self.prefix!r} {state} held={len(self.held)}>"

    # --- the SlotStore protocol -------------------------------------------------------------
    async def acquire(self, holder: str, claims: Sequence[Claim]) -> int | None:
        # Counted before the first await: a release made while this waits (the asker
        # gave up) is then seen, and undone once the acquisition is through.
        self._acquiring[holder] = self._acquiring.get(holder, 0) + 1
        try:
            refused = await self._acquire(holder, claims)
        finally:
            left = self._acquiring.pop(holder) - 1
            if left:
                self._acquiring[holder] = left
        if holder in self._released_meanwhile and not left:
            self._released_meanwhile.discard(holder)
            if refused is None:
                await self.release(holder, claims)
        return refused

    async def _acquire(self, holder: str, claims: Sequence[Claim]) -> int | None:
        self._start_keeper()
        keys = [self._key(claim) for claim in claims]
        if not self.connected and time.monotonic() >= self._retry_at:
            await self._try_to_regain()
        if self.connected:
            args = [self._now(), int(self.lease * 1000), holder, *(c.limit for c in claims)]
            try:
                refused = int(await self._call(self._acquire_script, keys, args))
            except UNREACHABLE as error:
                self._lost(error)
            else:
                self._failures = 0
                if refused != -1:
                    return refused
                for key in keys:
                    self.held.setdefault(key, set()).add(holder)
                return None
        return self._acquire_locally(holder, claims, keys)

    async def release(self, holder: str, claims: Sequence[Claim]) -> int:
        if holder in self._acquiring:
            self._released_meanwhile.add(holder)
        keys = [self._key(claim) for claim in claims]
        released = 0
        leased = []
        for key in keys:
            for table, remote in ((self.held, True), (self.local, False)):
                holders = table.get(key)
                if holders is not None and holder in holders:
                    holders.discard(holder)
                    if not holders:
                        del table[key]
                    released += 1
                    if remote:
                        leased.append(key)
        if leased and self.connected:
            # Unreachable, the lease ends it anyway; never retried, never waited for long.
            with contextlib.suppress(*UNREACHABLE):
                await self._call(self._release_script, leased, [holder])
        return released

    async def count(self, scope: str, key: str) -> int:
        keys = [self._key(Claim(scope, key, 1))]
        (count,) = await self._call(self._count_script, keys, [self._now()])
        return int(count)

    async def counts(self) -> dict[str, dict[str, int]]:
        pattern = f"{{{self.prefix}}}:slot:*"
        keys = [key async for key in self._client.scan_iter(match=pattern, count=500)]
        counts: dict[str, dict[str, int]] = {}
        if not keys:
            return counts
        values = await self._call(self._count_script, keys, [self._now()])
        for key, value in zip(keys, values, strict=True):
            if int(value):
                name = key.decode() if isinstance(key, bytes) else str(key)
                scope, slot = json.loads(name.split(":slot:", 1)[1])
                counts.setdefault(scope, {})[slot] = int(value)
        return counts

    async def close(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if self._own_batcher:
            await self._batcher.aclose()

    # --- the keeper -------------------------------------------------------------------------
    def _start_keeper(self) -> None:
        if self._keeper is None and self._clock is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        """Every third of a lease (sooner while Redis is unreachable), `renew`."""
        while True:
            if self.connected:
                delay = self.lease / 3
            else:
                delay = max(0.0, self._retry_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake_keeper.wait()
            self._wake_keeper.clear()
            try:
                await self.renew()
            except Exception:
                log.exception("lease renewal failed", prefix=self.prefix)

    async def renew(self) -> None:
        """Extend the lease of every slot this process holds, in batches; while Redis is
        unreachable, try to reach it again (once the backoff allows) and write back."""
        if not self.connected:
            if time.monotonic() >= self._retry_at:
                await self._try_to_regain()
            return
        try:
            await self._renew(write_back=False)
        except UNREACHABLE as error:
            self._lost(error)

    async def _renew(self, *, write_back: bool) -> None:
        if write_back:
            # Back from an outage: what was admitted meanwhile joins the leases, and every
            # lease is written again (a restarted Redis has none of them).
            for key, holders in self.local.items():
                self.held.setdefault(key, set()).update(holders)
            self.local.clear()
        pairs = [(key, holder) for key, holders in self.held.items() for holder in holders]
        mode = "ALL" if write_back else "XX"
        if not pairs and write_back:
            await asyncio.wait_for(self._client.ping(), self.timeout)
        for start in range(0, len(pairs), _RENEW_BATCH):
            batch = pairs[start : start + _RENEW_BATCH]
            args = [self._now(), int(self.lease * 1000), mode, *(h for _, h in batch)]
            await self._call(self._renew_script, [k for k, _ in batch], args)

    # --- failure policy ---------------------------------------------------------------------
    def _lost(self, error: BaseException) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + backoff(self._failures, self._max_backoff)
        if self.connected:
            self.connected = False
            log.warning(
                "redis unreachable; limits follow the failure policy",
                prefix=self.prefix,
                policy=self.failure,
                error=repr(error),
            )
            self._report(False)
        self._wake_keeper.set()

    async def _try_to_regain(self) -> None:
        """Write back every slot this process holds; on success, the limits are shared
        again (on failure, the next try is later, by the backoff)."""
        try:
            await self._renew(write_back=True)
        except UNREACHABLE as error:
            self._lost(error)
            return
        self.connected = True
        self._failures = 0
        log.info("redis reachable again; limits are shared again", prefix=self.prefix)
        self._report(True)

    def _report(self, connected: bool) -> None:
        labels = {"backend": "redis"}
        tell_quietly(self._metrics, SetGauge(BACKEND_CONNECTED.name, int(connected), labels))
        to = {"backend": "redis", "to": "connected" if connected else "unreachable"}
        tell_quietly(self._metrics, Inc(BACKEND_STATE_CHANGES.name, 1, to))

    def _acquire_locally(self, holder: str, claims: Sequence[Claim], keys: list[str]) -> int | None:
        if self.failure == "closed":
            return 0
        if self.failure == "partition":
            for index, (claim, key) in enumerate(zip(claims, keys, strict=True)):
                mine = self.held.get(key, set()) | self.local.get(key, set())
                if holder not in mine and len(mine) >= max(1, claim.limit // self.processes):
                    return index
        for key in keys:
            self.local.setdefault(key, set()).add(holder)
        return None

    # --- helpers ----------------------------------------------------------------------------
    def _key(self, claim: Claim) -> str:
        # One hash tag for every key: the scripts' keys share a cluster slot.
        return f"{{{self.prefix}}}:slot:{json.dumps([claim.scope, claim.key])}"

    def _now(self) -> int:
        return 0 if self._clock is None else self._clock()

    async def _call(self, script: Any, keys: Sequence[str], args: Sequence[object]) -> Any:
        async with asyncio.timeout(self.timeout):
            return await script(keys=list(keys), args=list(args))


@dataclass(frozen=True, slots=True)
class RedisBackend:
    """Shared services on Redis (see the module docstring for what is shared and how).

    `url`: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS), or
    ``unix:///path/redis.sock[?db=N]``. Every key starts with `prefix` (one hash tag, so
    a Redis Cluster keeps them on one node). `lease`: seconds a dead process's slots
    outlive it at most. `timeout`: seconds Redis gets to answer an admission before the
    `failure` policy decides (`processes`: how many share the limits, for
    ``"partition"``).
    """

    url: str
    prefix: str = "aiowt"
    lease: float = 15.0
    timeout: float = 0.05
    failure: Failure = "partition"
    processes: int = 1

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise UsageError(f"a Redis URL starts redis://, rediss:// or unix://, not {scheme!r}")
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise UsageError(f"prefix must be a non-empty name without braces, got {self.prefix!r}")
        for name in ("lease", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.failure not in _FAILURES:
            raise UsageError(f"failure must be one of {_FAILURES}, got {self.failure!r}")
        processes = self.processes
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise UsageError(f"processes must be a positive int, got {processes!r}")

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """The backend a URL names, options as query parameters (``?prefix=x&lease=5``)."""
        parts = urlsplit(url)
        options: dict[str, str] = {}
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ("prefix", "lease", "timeout", "failure", "processes"):
                options[name] = value
            else:
                kept.append((name, value))
        query = urlencode(kept)
        # urlunsplit drops the empty netloc of unix:///path; redis-py needs it.
        base = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
        try:
            return cls(
                base,
                prefix=options.get("prefix", "aiowt"),
                lease=float(options.get("lease", 15.0)),
                timeout=float(options.get("timeout", 0.05)),
                failure=cast(Failure, options.get("failure", "partition")),
                processes=int(options.get("processes", 1)),
            )
        except ValueError as error:
            raise UsageError(f"bad option in backend URL: {error}") from None

    def __repr__(self) -> str:
        return f"RedisBackend({self.location!r}, prefix={self.prefix!r}, lease={self.lease:g})"

    @property
    def location(self) -> str:
        """The URL without its password."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))

    def with_processes(self, processes: int) -> RedisBackend:
        """The same backend, for `processes` processes sharing its limits."""
        return RedisBackend(
            self.url, self.prefix, self.lease, self.timeout, self.failure, processes
        )

    def start(self) -> Services:
        """The services on the running loop, their scripts sent through one `Batcher`
        (one connection, one pipeline per round trip), rooms' and the registry's
        messages through one `RedisBridge`."""
        metrics = MetricsCollector.start()
        # Rooms and the registry wait longer than admission: nothing waits on them but
        # a room's own members, and a room gone local for a slow reply costs more.
        patient = max(self.timeout, 0.5)
        batcher = Batcher(from_url(self.url), timeout=max(patient, 1.0))
        slots = RedisSlots(
            batcher.client,
            prefix=self.prefix,
            lease=self.lease,
            timeout=self.timeout,
            failure=self.failure,
            processes=self.processes,
            metrics=metrics,
            batcher=batcher,
        )
        bridge = RedisBridge.start(from_url(self.url), lease=self.lease)
        rooms = RedisRooms(
            batcher.client,
            bridge,
            prefix=self.prefix,
            lease=self.lease,
            timeout=patient,
            batcher=batcher,
        )
        sessions: ActorRef[Any] = SharedSessionRegistry.start(
            batcher.client,
            bridge,
            prefix=self.prefix,
            lease=self.lease,
            timeout=patient,
            batcher=batcher,
        )
        limits = RateLimitRegistry.start(slots)
        return Services(metrics, limits, sessions, rooms, support=(bridge, batcher))
