"""`aiowt run --workers N`: N server processes sharing one UDP port, and their supervisor.

Each worker is a full, independent process running the same `Server` (imported from
`MODULE:ATTR`), bound to the same address with `SO_REUSEPORT`. The kernel spreads
incoming UDP datagrams over the workers by a hash of the source and destination
addresses, so every packet of one QUIC connection reaches the same worker for as long
as the client's address and port stay the same. All workers serve the same certificate:
the supervisor makes one self-signed certificate for all of them when none is given.

The supervisor starts the workers, restarts one that exits while the server is meant
to be running (after a short delay that grows while a worker keeps dying at start, and
gives up when one fails to start five times in a row), and on SIGINT or SIGTERM asks
every worker to shut down gracefully (each closes its sessions with GOING_AWAY) and
waits for them.

Known limits:

- **Connection migration.** A client whose address changes (NAT rebinding, Wi-Fi to
  cellular, an explicit QUIC migration) hashes to another worker, which does not know
  the connection: its packets are dropped there and the connection times out; the
  client must reconnect. Routing by connection id (eBPF `SO_ATTACH_REUSEPORT_EBPF`
  steering on the server's connection ids) would lift this; aiowt does not do it.
- **Per-process state.** On the default in-process backend, everything the shared
  actors keep is per worker: with N workers a per-IP limit of 10 lets up to 10 x N
  sessions from one address through. With `--backend redis://...` the session limits
  (per IP, route, path, and `MaxSessions`) are exact across the workers (and machines);
  rooms and the session registry span the workers too; the circuit breaker is per
  worker by design. Metrics are kept per worker; ``--metrics-port`` serves their sum.
- A worker that crashes takes its sessions with it; their clients see the connection
  time out (there is no one left to send CONNECTION_CLOSE) and reconnect, landing on a
  live worker or on its replacement.

Run directly as `python -m aiowt.workers MODULE:ATTR --workers N`, or through
the CLI as `aiowt run MODULE:ATTR --workers N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from aiowt.actors.backend import Backend, backend_from_url
from aiowt.transport import UsageError
from aiowt.transport.engine import ENGINES, check_engine
from aiowt.transport.tls import generate_self_signed, write_certificate

from ._loading import load_server, serve_websocket
from .worker_metrics import SNAPSHOT_SOCKET_ENV, MetricsGateway, serve_snapshot

__all__ = ["Supervisor", "main", "run_worker", "supervise"]

log = structlog.get_logger("aiowt.workers")

WORKER_INDEX_ENV = "AIOWT_WORKER_INDEX"
"""Set in each worker's environment: its index, 0 to N-1 (stable across restarts)."""

WORKER_COUNT_ENV = "AIOWT_WORKER_COUNT"
"""Set in each worker's environment: how many workers share the port (and the limits)."""


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures_at_start: int = 0
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Starts `workers` processes serving `target`, restarts them, stops them.

    `run()` blocks until SIGINT/SIGTERM (or `request_stop()`), then shuts the workers
    down and returns the exit status: 0 after a clean shutdown, 1 when a worker could
    not be kept running.
    """

    startup_grace = 1.0
    """A worker that dies sooner than this after starting counts as failing to start."""
    max_start_failures = 5
    max_restart_delay = 10.0

    def __init__(
        self,
        target: str,
        *,
        workers: int,
        host: str,
        port: int,
        cert_file: str,
        key_file: str,
        backend: str | None = None,
        engine: str | None = None,
        websocket: str | None = None,
        websocket_port: int | None = None,
        shutdown_timeout: float = 10.0,
        python: str = sys.executable,
        snapshot_sockets: Sequence[Path] = (),
    ) -> None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.target = target
        self.host = host
        self.port = port
        self.cert_file = cert_file
        self.key_file = key_file
        self.backend = backend
        self.engine = engine
        self.websocket = websocket
        self.websocket_port = websocket_port
        self.shutdown_timeout = shutdown_timeout
        self.python = python
        self.workers = [_Worker(i) for i in range(workers)]
        self.snapshot_sockets = tuple(snapshot_sockets)
        """Where each worker answers its metrics (one per worker, or none)."""
        self._stopping = False
        self._failed = False

    def __repr__(self) -> str:
        return (
            f"Supervisor({self.target!r}, workers={len(self.workers)}, "
            f"host={self.host!r}, port={self.port})"
        )

    def request_stop(self, *_: Any) -> None:
        self._stopping = True

    def _argv(self) -> list[str]:
        return [
            self.python,
            "-m",
            "aiowt.workers",
            "--worker",
            self.target,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--cert",
            self.cert_file,
            "--key",
            self.key_file,
            *(("--backend", self.backend) if self.backend is not None else ()),
            *(("--engine", self.engine) if self.engine is not None else ()),
            *(("--websocket", self.websocket) if self.websocket is not None else ()),
            *(
                ("--websocket-port", str(self.websocket_port))
                if self.websocket_port is not None
                else ()
            ),
        ]

    def _spawn(self, worker: _Worker) -> None:
        env = {
            **os.environ,
            WORKER_INDEX_ENV: str(worker.index),
            WORKER_COUNT_ENV: str(len(self.workers)),
            "PYTHONUNBUFFERED": "1",
        }
        if self.snapshot_sockets:
            env[SNAPSHOT_SOCKET_ENV] = str(self.snapshot_sockets[worker.index])
        worker.process = subprocess.Popen(self._argv(), env=env)
        worker.started_at = time.monotonic()
        worker.restart_at = None
        worker.pids.append(worker.process.pid)
        log.info("worker started", worker=worker.index, pid=worker.process.pid)

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for worker in self.workers:
                self._spawn(worker)
            while not self._stopping:
                self._check_workers()
                # The supervisor runs no event loop (it only watches its workers): a
                # short poll is simpler than SIGCHLD handling and costs nothing.
                time.sleep(0.1)
        finally:
            self._stop_workers()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self._failed else 0

    def _check_workers(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                lived = now - worker.started_at
                worker.process = None
                if lived < self.startup_grace:
                    worker.failures_at_start += 1
                else:
                    worker.failures_at_start = 0
                if worker.failures_at_start >= self.max_start_failures:
                    log.error(
                        "worker keeps failing at start; stopping",
                        worker=worker.index,
                        exit_code=process.returncode,
                    )
                    self._failed = True
                    self._stopping = True
                    return
                delay = min(self.max_restart_delay, 0.1 * 2 ** max(0, worker.failures_at_start))
                worker.restart_at = now + delay
                log.warning(
                    "worker exited; restarting",
                    worker=worker.index,
                    pid=process.pid,
                    exit_code=process.returncode,
                    restart_in=round(delay, 2),
                )
            due = worker.restart_at
            if worker.process is None and due is not None and now >= due:
                self._spawn(worker)

    def _stop_workers(self) -> None:
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 5
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop in time; killing it", pid=process.pid)
                process.kill()
                process.wait(5)
        for worker in self.workers:
            worker.process = None


def _shared_by(backend: Backend, workers: int) -> Backend:
    """A shared backend's partition policy divides each limit by the processes sharing it:
    tell it how many workers there are, unless it was told already."""
    with_processes = getattr(backend, "with_processes", None)
    if with_processes is None or workers <= 1 or getattr(backend, "processes", 1) != 1:
        return backend
    shared: Backend = with_processes(workers)
    return shared


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def supervise(
    target: str,
    *,
    workers: int,
    host: str | None = None,
    port: int | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    backend: str | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    engine: str | None = None,
    websocket: str | None = None,
    websocket_port: int | None = None,
) -> int:
    """Serve `target` (`MODULE:ATTR`, a `Server`) from `workers` processes. Blocks.

    `host` and `port` default to the server's own; port 0 picks one free port for all
    workers. Without `cert_file`/`key_file` one self-signed certificate is made and
    shared by every worker. `backend` (a URL) replaces the server's own backend in every
    worker; a shared one (Redis) makes the limits cluster-wide. With `metrics_port`,
    ``GET /metrics`` there shows the sum of every worker's metrics
    (`aiowt.worker_metrics`; 0 picks a free port). `engine` replaces the server's QUIC
    engine in every worker. `websocket` (``tls`` or ``plain``) and `websocket_port` serve
    WebSocket too, every worker on the shared TCP port.
    """
    if engine is not None:
        check_engine(engine)
    server = load_server(target)
    serve_websocket(server, websocket, websocket_port)
    if backend is not None:
        backend_from_url(backend)  # a bad URL fails here, once, not in every worker
    if (cert_file is None) != (key_file is None):
        raise UsageError("--cert and --key go together")
    host = server.host if host is None else host
    port = server.port if port is None else port
    if port == 0:
        port = _free_port(host)
    with tempfile.TemporaryDirectory(prefix="aiowt-workers-") as tmp:
        banner_cert = ""
        if cert_file is None or key_file is None:
            if server.certificate_files is not None:
                cert_file, key_file = (str(path) for path in server.certificate_files)
            else:
                certificate = server.certificate or generate_self_signed()
                cert_path, key_path = write_certificate(certificate, tmp)
                cert_file, key_file = str(cert_path), str(key_path)
                banner_cert = (
                    f"\n  certificate sha256 (serverCertificateHashes): {certificate.sha256_hex}"
                    f"\n  spki sha256 (--ignore-certificate-errors-spki-list): "
                    f"{certificate.spki_sha256_b64}"
                )
        shown = "localhost" if host in ("::", "0.0.0.0", "::1", "127.0.0.1") else host
        also = ""
        if server.websocket:
            scheme = "wss" if server.websocket_tls else "ws"
            also = f"\n  and WebSocket on {scheme}://{shown}:{server.websocket_port or port} (tcp)"
        print(
            f"aiowt serving WebTransport on https://{shown}:{port} (udp {host}) with "
            f"{workers} worker processes (SO_REUSEPORT){also}{banner_cert}",
            flush=True,
        )
        sockets = [Path(tmp) / f"metrics-{i}.sock" for i in range(workers)]
        gateway = None
        if metrics_port is not None:
            gateway = MetricsGateway(sockets, host=metrics_host, port=metrics_port)
            gateway.start()
            print(f"aiowt metrics of all workers on http://{metrics_host}:{gateway.port}/metrics")
        supervisor = Supervisor(
            target,
            workers=workers,
            host=host,
            port=port,
            cert_file=cert_file,
            key_file=key_file,
            backend=backend,
            engine=engine,
            websocket=websocket,
            websocket_port=websocket_port,
            shutdown_timeout=server.shutdown_timeout,
            snapshot_sockets=sockets if gateway is not None else (),
        )
        try:
            return supervisor.run()
        finally:
            if gateway is not None:
                gateway.stop()


def whole_lines(stream: Any) -> None:
    """Write each line of `stream` in one write: the workers share the terminal, and an
    unbuffered stream (`python -u`, PYTHONUNBUFFERED) writes a line's text and its newline
    apart, so two workers' lines ran together ("stopped2026-...")."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True, write_through=False)


def run_worker(
    target: str,
    host: str,
    port: int,
    cert_file: str,
    key_file: str,
    backend: str | None = None,
    engine: str | None = None,
    websocket: str | None = None,
    websocket_port: int | None = None,
) -> int:
    """One worker: serve `target` on the shared port until SIGINT/SIGTERM."""
    for stream in (sys.stdout, sys.stderr):
        whole_lines(stream)
    server = load_server(target)
    serve_websocket(server, websocket, websocket_port)
    if engine is not None:
        server.engine = engine
    if backend is not None:
        server.backend = backend_from_url(backend)
    server.backend = _shared_by(server.backend, int(os.environ.get(WORKER_COUNT_ENV, "1")))
    server.host = host
    server.port = port
    server.reuse_port = True
    server.use_certificate_files(cert_file, key_file)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        snapshots = None
        socket_path = os.environ.get(SNAPSHOT_SOCKET_ENV)
        if socket_path:
            snapshots = await serve_snapshot(server.services.metrics, socket_path)
        index = os.environ.get(WORKER_INDEX_ENV, "?")
        print(
            f"aiowt worker {index} pid {os.getpid()} listening on {host}:{server.address[1]}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            if snapshots is not None:
                snapshots.close()
            await server.shutdown()

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aiowt.workers",
        description="serve MODULE:ATTR from N processes sharing the UDP port",
    )
    parser.add_argument("target", metavar="MODULE:ATTR")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--cert", default=None)
    parser.add_argument("--key", default=None)
    parser.add_argument("--backend", default=None, metavar="URL")
    parser.add_argument("--engine", default=None, choices=ENGINES)
    parser.add_argument("--websocket", default=None, choices=("tls", "plain"))
    parser.add_argument("--websocket-port", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.worker:
            return run_worker(
                args.target,
                args.host,
                args.port,
                args.cert,
                args.key,
                args.backend,
                args.engine,
                args.websocket,
                args.websocket_port,
            )
        return supervise(
            args.target,
            workers=args.workers,
            host=args.host,
            port=args.port,
            cert_file=args.cert,
            key_file=args.key,
            backend=args.backend,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            engine=args.engine,
            websocket=args.websocket,
            websocket_port=args.websocket_port,
        )
    except UsageError as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
