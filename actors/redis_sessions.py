"""`SharedSessionRegistry`: the session registry of a process, listed in Redis for all.

Answers the same messages as `SessionRegistry`. Its own sessions stay here (lookups
and lists return this process's sessions, with their transport `Session`); what the
other processes learn from Redis:

- which process holds a session: a hash ``session id -> {node, ip, path, user, at}``,
  a set per process and one per user, so `Multicast` reaches a session and `ToUser` a
  person's sessions on whatever process holds them, and `CountSessions` counts the
  cluster's;
- that a process is alive: a lease per process, renewed every third of a lease. The
  sessions of a process that dies leave the registry at most one lease after it did;
- deliveries: each process listens on a channel of its own (`Multicast` to its
  sessions) and on one for everybody (`Broadcast`, `BroadcastExcept`).

Registrations are written behind: `Register` and `Unregister` change this process's
entries at once and queue the change, and one writer sends the queue as one script.
So admission never waits for Redis here (the limits, in `RateLimitRegistry`, do that),
and the listing is behind by one round trip at most. While Redis is unreachable the
queue is dropped and the registry counts and delivers locally; once Redis answers, the
writer replaces this process's entries with the ones it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import structlog
from pykka import ActorRef

from ._redis import LUA_NOW, UNREACHABLE, Batcher, Redis, batcher_for
from ._service import handles
from .redis_bridge import Published, RedisBridge, Renew, Resync, Subscribe, Unsubscribe
from .sessions import (
    Broadcast,
    BroadcastExcept,
    CountSessions,
    Delivery,
    Listed,
    Multicast,
    Register,
    SessionRegistry,
    ToUser,
    Unregister,
    Via,
    _id,
    _ids,
    _user,
    encode_for,
)

__all__ = ["SharedSessionRegistry"]

log = structlog.get_logger("aiowt.backend")

# KEYS: 1 sessions (hash id -> msgpack {node, ip, path, user, at}), 2 nodes (zset node ->
# lease end). ARGV: 1 now in ms (0: Redis' clock), 2 lease in ms, 3 this node, 4 key
# prefix (a node's own set is <prefix>:node:<node>, a user's <prefix>:user:<user>, all in
# the same hash slot).
_LIB = (
    LUA_NOW
    + """local lease, me, prefix = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local function owned(node)
  return prefix .. ':node:' .. node
end
-- Take session `id` out if `node` holds it (a newer listing elsewhere stays).
local function drop(id, node)
  local entry = redis.call('HGET', KEYS[1], id)
  if not entry then return end
  local listed = cmsgpack.unpack(entry)
  if listed.node ~= node then return end
  redis.call('HDEL', KEYS[1], id)
  if listed.user and listed.user ~= '' then
    redis.call('SREM', prefix .. ':user:' .. listed.user, id)
  end
end
local function forget(node)
  local set = owned(node)
  for _, id in ipairs(redis.call('SMEMBERS', set)) do drop(id, node) end
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[2], node)
end
local function sweep()
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do forget(node) end
end
"""
)

# ARGV 5: "1" to replace this node's entries (a write-back), else "0"; then ops:
# "+", id, entry | "-", id. Renews this node's lease; replies the cluster's count, or -1
# when this node must write everything back.
_SYNC = (
    _LIB
    + """
if ARGV[5] == '1' then forget(me) end
local set = owned(me)
for i = 6, #ARGV do
  if ARGV[i] == '+' then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
    redis.call('SADD', set, ARGV[i + 1])
    local user = cmsgpack.unpack(ARGV[i + 2]).user
    if user and user ~= '' then redis.call('SADD', prefix .. ':user:' .. user, ARGV[i + 1]) end
  elseif ARGV[i] == '-' then
    drop(ARGV[i + 1], me)
    redis.call('SREM', set, ARGV[i + 1])
  end
end
local new = redis.call('ZADD', KEYS[2], now + lease, me)
sweep()
-- Not listed any more (a Redis that restarted empty, or this process was swept away
-- after a stall longer than a lease) while only changes were sent: ask for everything.
if new == 1 and ARGV[5] ~= '1' then return -1 end
return redis.call('HLEN', KEYS[1])
"""
)

_COUNT = (
    _LIB
    + """
redis.call('ZADD', KEYS[2], 'XX', now + lease, me)
sweep()
return redis.call('HLEN', KEYS[1])
"""
)

_LEAVE = (
    _LIB
    + """
forget(me)
return 1
"""
)


class SharedSessionRegistry(SessionRegistry):
    """A `SessionRegistry` whose sessions are listed in Redis (see the module).

    `clock` (milliseconds) replaces Redis' clock in the scripts, for tests that move
    time by hand.
    """

    def __init__(
        self,
        client: Redis,
        bridge: ActorRef[RedisBridge],
        *,
        prefix: str,
        lease: float,
        timeout: float,
        clock: Callable[[], int] | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        """`batcher` sends the scripts (the backend's, shared); without one, the
        registry makes its own on `client` and closes it when it stops."""
        super().__init__()
        self._client = client
        self._batcher, self._own_batcher = batcher_for(client, batcher)
        self._bridge = bridge
        self._lease = lease
        self._timeout = timeout
        self._clock = clock
        self.node = uuid.uuid4().hex[:16]
        """This process's name in the registry."""
        self._prefix = f"{{{prefix}}}:sessions"
        self._keys = [self._prefix, f"{self._prefix}:nodes"]
        self._own_channel = f"{self._prefix}:node:{self.node}:inbox"
        self._everyone = f"{self._prefix}:everyone"
        self._sync = self._batcher.register_script(_SYNC)
        self._count_script = self._batcher.register_script(_COUNT)
        self._leave = self._batcher.register_script(_LEAVE)
        self._pending: list[bytes | str] = []
        self._reset = True
        """Replace this process's entries in Redis on the next write (start, regain)."""
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._reachable = True
        self._waiters: list[asyncio.Future[bool]] = []

    def __repr__(self) -> str:
        return f"<SharedSessionRegistry node={self.node} sessions={len(self._entries)}>"

    async def on_start(self) -> None:  # type: ignore[override]
        self._writer = asyncio.get_running_loop().create_task(self._write())
        self._wake.set()
        for channel in (self._own_channel, self._everyone):
            with contextlib.suppress(Exception):
                await self._bridge.ask(Subscribe(channel, self.actor_ref), block=False)

    async def on_stop(self) -> None:  # type: ignore[override]
        for channel in (self._own_channel, self._everyone):
            with contextlib.suppress(Exception):
                self._bridge.tell(Unsubscribe(channel))
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        _resolve(self._waiters, False)
        with contextlib.suppress(*UNREACHABLE):
            await self._run(self._leave, [])
        if self._own_batcher:
            await self._batcher.aclose()

    # -- registration, written behind ----------------------------------------------------------

    @handles(Register)
    def _shared_register(self, message: Register) -> bool:
        known = _id(message.session_id) in self._entries
        registered = super()._register(message)
        if registered and not known:
            listing = self._listing(message.remote_ip, message.path, message.user)
            self._queue("+", message.session_id, listing)
        return registered

    @handles(Unregister)
    def _shared_unregister(self, message: Unregister) -> bool:
        unregistered = super()._unregister(message)
        if unregistered and message.session_id not in self._entries:
            self._queue("-", message.session_id)
        return unregistered

    @handles(Renew)
    def _renew(self, message: Renew) -> None:
        self._wake.set()

    @handles(Resync)
    def _resync(self, message: Resync) -> None:
        self._reset = True
        self._wake.set()

    @handles(Listed)
    async def _shared_listed(self, message: Listed) -> bool:
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        return await waiter

    def _listing(self, remote_ip: str, path: str, user: str) -> bytes:
        entry = {"node": self.node, "ip": remote_ip, "path": path, "user": user, "at": time.time()}
        packed: bytes = msgpack.packb(entry)
        return packed

    def _queue(self, *op: bytes | str) -> None:
        self._pending += op
        self._wake.set()

    async def _write(self) -> None:
        """The one writer: sends the queued changes (or a full write-back) as one script."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            reset, self._reset = self._reset, False
            waiters, self._waiters = self._waiters, []
            if reset:
                self._pending = []
                ops: list[bytes | str] = []
                for session_id, entry in self._entries.items():
                    info = entry.info
                    packed = msgpack.packb(
                        {
                            "node": self.node,
                            "ip": info.remote_ip,
                            "path": info.path,
                            "at": time.time(),
                        }
                    )
                    ops += ["+", session_id, packed]
            else:
                ops, self._pending = self._pending, []
            try:
                reply = await self._run(self._sync, ["1" if reset else "0", *ops])
            except Exception as error:
                self._reset = True  # what was queued is lost: write everything back
                if isinstance(error, UNREACHABLE):
                    self._lost(error)
                else:  # a bug: said loudly, and the writer lives on
                    log.exception("writing the session listing failed", node=self.node)
                _resolve(waiters, False)
                continue
            if reply == -1:
                self._reset = True
                self._waiters[:0] = waiters  # listed by the write-back, next round
                self._wake.set()
                continue
            _resolve(waiters, True)
            if not self._reachable:
                self._reachable = True
                log.info("redis reachable again; sessions listed again", node=self.node)

    def _lost(self, error: BaseException) -> None:
        if self._reachable:
            self._reachable = False
            log.warning(
                "redis unreachable; sessions counted and reached in this process only",
                node=self.node,
                error=repr(error),
            )

    # -- asks that need the cluster ------------------------------------------------------------

    @handles(CountSessions)
    async def _shared_count(self, message: CountSessions) -> int:
        try:
            return int(await self._run(self._count_script, []))
        except UNREACHABLE as error:
            self._lost(error)
            return len(self._entries)

    @handles(Multicast)
    async def _shared_multicast(self, message: Multicast) -> Delivery:
        ids = _ids(message.session_ids)
        payload = encode_for(message.message, message.via)
        here = [self._entries[sid] for sid in ids if sid in self._entries]
        away = [sid for sid in ids if sid not in self._entries]
        local = self._send(payload, message.via, here, 0)
        forwarded = await self._forward(away, payload, message.via)
        missing = local.missing + len(away) - forwarded
        return Delivery(local.delivered, local.failed, missing, forwarded)

    @handles(ToUser)
    async def _shared_to_user(self, message: ToUser) -> Delivery:
        user = _user(message.user)
        payload = encode_for(message.message, message.via)
        local = self._send(payload, message.via, self._user_targets(user), 0)
        try:
            async with asyncio.timeout(self._timeout):
                listed = await self._client.smembers(f"{self._prefix}:user:{user}")
        except UNREACHABLE as error:
            self._lost(error)
            return local
        away = sorted(i for i in (_text(m) for m in listed) if i not in self._entries)
        forwarded = await self._forward(away, payload, message.via)
        return Delivery(local.delivered, local.failed, local.missing, forwarded)

    @handles(Broadcast)
    async def _shared_broadcast(self, message: Broadcast) -> Delivery:
        return await self._to_everyone(message.message, message.via, None)

    @handles(BroadcastExcept)
    async def _shared_broadcast_except(self, message: BroadcastExcept) -> Delivery:
        return await self._to_everyone(message.message, message.via, _id(message.session_id))

    async def _to_everyone(self, message: Any, via: Via, skip: str | None) -> Delivery:
        payload = encode_for(message, via)
        local = self._send(payload, via, self._targets(skip), 0)
        wire = msgpack.packb([self.node, via, payload, None, skip])
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.publish(self._everyone, wire)
            total = int(await self._run(self._count_script, []))
        except UNREACHABLE as error:
            self._lost(error)
            return local
        elsewhere = total - len(self._entries) - (skip is not None and skip not in self._entries)
        return Delivery(local.delivered, local.failed, local.missing, max(0, elsewhere))

    async def _forward(self, ids: list[str], payload: bytes, via: Via) -> int:
        """Hand `payload` to the processes holding `ids`; how many ids were handed on."""
        if not ids:
            return 0
        try:
            async with asyncio.timeout(self._timeout):
                entries = await self._client.hmget(self._prefix, ids)
                by_node: dict[str, list[str]] = {}
                for session_id, entry in zip(ids, entries, strict=True):
                    if entry is not None:
                        by_node.setdefault(msgpack.unpackb(entry)["node"], []).append(session_id)
                if not by_node:
                    return 0
                pipe = self._client.pipeline(transaction=False)
                for node, targets in by_node.items():
                    wire = msgpack.packb([self.node, via, payload, targets, None])
                    pipe.publish(f"{self._prefix}:node:{node}:inbox", wire)
                listeners = await pipe.execute()
        except UNREACHABLE as error:
            self._lost(error)
            return 0
        # A process that died (its lease not over yet) listens no more: its ids are missing.
        groups = zip(by_node.values(), listeners, strict=True)
        return sum(len(targets) for targets, heard in groups if heard)

    # -- deliveries from other processes -------------------------------------------------------

    @handles(Published)
    def _published(self, message: Published) -> None:
        try:
            origin, via, payload, ids, skip = msgpack.unpackb(message.data)
        except (ValueError, TypeError, msgpack.UnpackException):
            log.warning("not a registry delivery; ignored", channel=message.channel)
            return
        if origin == self.node or via not in ("datagram", "stream"):
            return
        if ids is None:
            targets = self._targets(skip)
        else:
            targets = [self._entries[sid] for sid in ids if sid in self._entries]
        self._send(payload, via, targets, 0)

    async def _run(self, script: Any, args: list[Any]) -> Any:
        now = 0 if self._clock is None else self._clock()
        base = [now, int(self._lease * 1000), self.node, self._prefix]
        async with asyncio.timeout(self._timeout):
            return await script(keys=self._keys, args=[*base, *args])


def _resolve(waiters: list[asyncio.Future[bool]], listed: bool) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(listed)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
