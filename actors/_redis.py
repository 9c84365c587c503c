"""What the Redis-backed services share: the import guard, what "unreachable" means,
how long to wait before trying again, and the `Batcher` that sends their scripts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:
    from redis.asyncio import Redis, from_url
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as error:  # pragma: no cover - the extra is installed for the tests
    raise ImportError("the Redis backend needs redis-py: pip install 'aiowt[redis]'") from error

__all__ = [
    "LUA_NOW",
    "UNREACHABLE",
    "BatchedScript",
    "Batcher",
    "Redis",
    "backoff",
    "batcher_for",
    "from_url",
]

UNREACHABLE = (TimeoutError, OSError, RedisConnectionError, RedisTimeoutError)
"""What says Redis cannot be reached now; anything else is a bug, and raised."""


LUA_NOW = """
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
"""How every script starts: `now` in milliseconds, from ARGV[1], or Redis' own clock when
that is 0 (one clock for every process; tests pass theirs)."""


def backoff(failures: int, cap: float) -> float:
    """Seconds before the next try after `failures` in a row: doubling from 0.1 s up to
    `cap`, jittered by half either way so processes that lost Redis together do not
    come back together."""
    delay: float = min(cap, 0.05 * 2 ** min(failures, 16))
    return delay * random.uniform(0.5, 1.5)


class Batcher:
    """The Redis scripts of one process's services, sent together.

    While one pipeline is in flight, the scripts called meanwhile queue, and the next
    pipeline takes them all: under load one round trip serves many sessions (a
    pipelined call costs the client a sixth of a lone one), and a lone call goes at
    once. Pipelined commands run in the order they were called. A caller that stops
    waiting (its timeout) is dropped from the queue if its script was not sent yet.

    `timeout` bounds each pipeline: a Redis that hangs fails the calls in flight, and
    the next pipeline starts on a fresh connection.
    """

    def __init__(self, client: Redis, *, timeout: float = 1.0, max_batch: int = 512) -> None:
        self.client = client
        self.timeout = timeout
        self.max_batch = max_batch
        self._queue: deque[_Call] = deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._loaded: set[str] = set()
        self.pipelines = 0
        """Pipelines sent so far (each one round trip)."""

    def __repr__(self) -> str:
        return f"<Batcher queued={len(self._queue)}>"

    def register_script(self, source: str) -> BatchedScript:
        return BatchedScript(self, source)

    async def call(self, script: BatchedScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())
        call = _Call(script, (len(keys), *keys, *args), asyncio.get_running_loop().create_future())
        self._queue.append(call)
        self._wake.set()
        return await call.reply

    async def aclose(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        for call in self._queue:
            if not call.reply.done():
                call.reply.set_exception(RedisConnectionError("the batcher is closed"))
        self._queue.clear()
        await self.client.aclose()

    async def _send_all(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch: list[_Call] = []
                while self._queue and len(batch) < self.max_batch:
                    call = self._queue.popleft()
                    if not call.reply.done():  # gone: its caller stopped waiting
                        batch.append(call)
                if batch:
                    await self._send(batch, retry=True)

    async def _send(self, batch: list[_Call], *, retry: bool) -> None:
        self.pipelines += 1
        pipe = self.client.pipeline(transaction=False)
        # Scripts this connection may not know yet are loaded first, in the same
        # pipeline, so no call ever runs out of its order for want of its script.
        loads = {c.script.sha: c.script.source for c in batch if c.script.sha not in self._loaded}
        for source in loads.values():
            pipe.execute_command("SCRIPT", "LOAD", source)
        for call in batch:
            pipe.execute_command("EVALSHA", call.script.sha, *call.arguments)
        try:
            async with asyncio.timeout(self.timeout):
                results = (await pipe.execute(raise_on_error=False))[len(loads) :]
        except Exception as error:
            self._loaded.clear()  # perhaps a restarted Redis: load them again
            for call in batch:
                if not call.reply.done():
                    call.reply.set_exception(error)
            return
        self._loaded.update(loads)
        missing = []
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError) and retry:
                missing.append(call)  # someone flushed the scripts: load, then run again
            elif call.reply.done():
                continue
            elif isinstance(result, Exception):
                call.reply.set_exception(result)
            else:
                call.reply.set_result(result)
        if missing:
            self._loaded.clear()
            await self._send(missing, retry=False)


def batcher_for(client: Redis, given: Batcher | None) -> tuple[Batcher, bool]:
    """`given` (the backend's, shared), or a new one on `client`; True when it is new, so
    the caller owns it and closes it."""
    if given is not None:
        return given, False
    return Batcher(client), True


class BatchedScript:
    """A Lua script sent by a `Batcher`: ``await script(keys=[...], args=[...])``."""

    __slots__ = ("batcher", "sha", "source")

    def __init__(self, batcher: Batcher, source: str) -> None:
        self.batcher = batcher
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self.batcher.call(self, keys, args)


@dataclass(slots=True)
class _Call:
    script: BatchedScript
    arguments: tuple[Any, ...]
    reply: asyncio.Future[Any]
