"""One scrape for every worker: ``aiowt run --workers N --metrics-port P``.

Each worker answers its collector's snapshot on a unix socket of its own
(`serve_snapshot`); the supervisor's `MetricsGateway` serves ``GET /metrics`` on
`P`: it asks every worker at that moment, sums what they answer
(`aiowt.actors.snapshots.merge_snapshots`) and renders the sum in the Prometheus
format. A worker that does not answer in time (restarting, say) is left out of the
sums and counted in ``aiowt_workers{state="missing"}``, so a scrape never hides that
it is partial.

Across machines there is nothing to merge here: each machine's supervisor is one
Prometheus target, and Prometheus sums them (``sum without (instance)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from aiowt.actors import ask
from aiowt.actors import metric_names as names
from aiowt.actors.metrics import MetricFamily, MetricsSnapshot, TakeSnapshot
from aiowt.actors.snapshots import decode_snapshot, encode_snapshot, merge_snapshots
from aiowt.transport import UsageError

__all__ = ["SNAPSHOT_SOCKET_ENV", "MetricsGateway", "serve_snapshot"]

log = structlog.get_logger("aiowt.workers")

SNAPSHOT_SOCKET_ENV = "AIOWT_METRICS_SOCKET"
"""Set in a worker's environment: the unix socket where it answers its snapshot."""

_MAX_SNAPSHOT = 64 * 1024 * 1024


async def serve_snapshot(metrics: Any, path: str) -> asyncio.AbstractServer:
    """Answer every connection to `path` with the collector's snapshot, then close it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                snapshot = await ask(metrics, TakeSnapshot())
            writer.write(encode_snapshot(snapshot))
            await writer.drain()
        except Exception:
            log.warning("could not answer the supervisor's scrape", exc_info=True)
        finally:
            writer.close()

    _remove_stale(path)
    return await asyncio.start_unix_server(answer, path)


def _remove_stale(path: str) -> None:
    """The socket a previous life of this worker left behind (it was restarted)."""
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()


class MetricsGateway:
    """The supervisor's ``/metrics``: the sum of every worker's snapshot at each scrape.

    `sockets` are the workers' (`serve_snapshot`), each given `timeout` seconds.
    """

    def __init__(
        self, sockets: Sequence[Path], *, host: str, port: int, timeout: float = 2.0
    ) -> None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:  # pragma: no cover - the extra is installed for the tests
            raise UsageError(
                "--metrics-port needs prometheus_client: pip install 'aiowt[prometheus]'"
            ) from None
        self.sockets = tuple(sockets)
        self.timeout = timeout
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body, content_type = gateway.render(self.headers.get("Accept", ""))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes are not news

        class Http(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self._http = Http((host, port), Handler)
        self.port: int = self._http.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="aiowt-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def scrape(self) -> MetricsSnapshot:
        """Every worker's snapshot now, summed, with ``aiowt_workers`` saying who answered."""
        answered: list[MetricsSnapshot] = []
        for path in self.sockets:
            try:
                answered.append(decode_snapshot(self._read(path)))
            except (OSError, ValueError) as error:
                log.info("a worker did not answer the scrape", socket=str(path), error=repr(error))
        merged = merge_snapshots(answered)
        missing = len(self.sockets) - len(answered)
        workers = MetricFamily(
            names.WORKERS.name,
            "gauge",
            names.WORKERS.help,
            MappingProxyType(
                {(("state", "answered"),): len(answered), (("state", "missing"),): missing}
            ),
            0,
        )
        return MetricsSnapshot(MappingProxyType({**merged.families, workers.name: workers}))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        from aiowt.middleware.metrics import render_snapshot

        return render_snapshot(self.scrape(), accept)

    def _read(self, path: Path) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(self.timeout)
            client.connect(str(path))
            chunks: list[bytes] = []
            size = 0
            while chunk := client.recv(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_SNAPSHOT:
                    raise ValueError("snapshot too large")
            return b"".join(chunks)
