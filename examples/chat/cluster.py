"""`python -m examples.chat.cluster`: the chat on two workers sharing one Redis.

Starts a private `redis-server` (a unix socket in a temporary folder, nothing on disk),
then the chat demo with `--workers 2 --backend unix://...`: two processes on one UDP
port, the kernel spreading connections over them, one room order and one set of limits
between them. Ctrl-C stops the workers, then Redis. Needs Debian's `redis-server`
(`make demo-cluster` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from aiowt.redis_server import RedisServer
from examples.chat.server import main as chat_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.chat.cluster", description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=4433)
    args = parser.parse_args(argv)
    redis = RedisServer()
    try:
        redis.start()
    except FileNotFoundError:
        raise SystemExit("redis-server is not installed: `make demo-cluster` installs it") from None
    try:
        url = redis.url()
        print(f"redis on {url}", flush=True)
        with contextlib.suppress(SystemExit, KeyboardInterrupt):
            chat_main(["--workers", str(args.workers), "--port", str(args.port), "--backend", url])
    finally:
        redis.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
