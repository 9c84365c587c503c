"""`bench.stack_app:server`: the bench's recommended-stack echo server, as an `aiowt run`
target (what `bench.cluster` runs under ``--workers``)."""

from __future__ import annotations

from .servers import build_aiowt_server, configure_production_logging

configure_production_logging()
server, _stack = build_aiowt_server("aiowt-stack", "127.0.0.1", 0, None, None)
