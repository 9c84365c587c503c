"""One process of `bench.cluster`'s room fan-out: `members` members of one room on the
Redis backend; with ``--post``, its first member posts `posts` messages.

Prints ``READY`` once its members are in, waits for ``GO`` on stdin, and prints one JSON
line when every member here has every post: when it started, when it finished, and how
many deliveries its members got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import structlog

from aiowt.actors import LoopActor, RoomManager, ask
from aiowt.actors.redis_backend import RedisBackend
from aiowt.actors.rooms import (
    JoinRoom,
    Member,
    MessagePosted,
    Post,
    RoomEventDelivered,
    RoomSnapshot,
)

ROOM = "bench"


class Progress:
    """One member's, as the run sees it."""

    def __init__(self) -> None:
        self.joined = asyncio.Event()
        """Set by the room's snapshot: the join went through Redis."""
        self.done = asyncio.Event()
        self.count = 0


class Counter(LoopActor):
    """A member that counts the posts it is delivered."""

    register_globally: ClassVar[bool] = False

    def __init__(self, expected: int, progress: Progress) -> None:
        super().__init__()
        self.expected = expected
        self.progress = progress
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RoomSnapshot):
            self.progress.joined.set()
        elif isinstance(message, RoomEventDelivered) and isinstance(message.event, MessagePosted):
            self.count += 1
            self.progress.count = self.count
            if self.count == self.expected:
                self.progress.done.set()
        return None


async def run(url: str, members: int, posts: int, post: bool) -> dict[str, Any]:
    services = RedisBackend.from_url(url).start()
    manager = RoomManager.start(rooms=services.rooms)
    progress = [Progress() for _ in range(members)]
    prefix = "p" if post else "l"
    room = None
    for n, mine in enumerate(progress):
        ref = Counter.start(posts, mine)
        room = await ask(manager, JoinRoom(ROOM, Member(f"{prefix}{n}", f"{prefix}{n}", ref)))
    for mine in progress:  # every join is in the room's order before anyone posts
        await mine.joined.wait()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.time()
    if post:
        assert room is not None
        for n in range(posts):
            room.tell(Post(f"{prefix}0", {"n": n}))
    try:
        async with asyncio.timeout(float(os.environ.get("AIOWT_BENCH_ROOM_TIMEOUT", "240"))):
            for mine in progress:
                await mine.done.wait()
    except TimeoutError:
        counts = sorted(mine.count for mine in progress)
        role = "poster" if post else "listener"
        sys.stderr.write(f"room process ({role}): posts per member {counts}\n")
        raise
    finished = time.time()
    await manager.stop(block=False)
    await services.stop()
    return {"started": started, "finished": finished, "deliveries": members * posts}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.room_process")
    parser.add_argument("--url", required=True)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--post", action="store_true")
    args = parser.parse_args(argv)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    print(json.dumps(asyncio.run(run(args.url, args.members, args.posts, args.post))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
