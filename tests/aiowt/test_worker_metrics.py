"""`--metrics-port`: one scrape shows the sum of every worker's metrics.

Two real workers behind the supervisor; sessions land on both (each CONNECT answer
names its worker's pid); the supervisor's ``/metrics`` counts every one of them, and
says both workers answered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from aiowt import Server
from aiowt.middleware import Metrics
from aiowt.transport import connect
from aiowt.transport.tls import generate_self_signed, write_certificate
from examples.echo import Echo
from tests.aiowt.test_workers import _free_udp_port, _pid_header, _read_listening
from tests.conftest import bounded

REPO = Path(__file__).resolve().parents[2]

server = Server()
"""What each worker serves (`tests.aiowt.test_worker_metrics:server`)."""
server.use(_pid_header, Metrics())
server.route("/pid", Echo)


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_one_scrape_shows_every_workers_sessions(tmp_path: Path) -> None:
    certificate = generate_self_signed()
    cert_path, key_path = write_certificate(certificate, tmp_path)
    port = _free_udp_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "aiowt", "run", "tests.aiowt.test_worker_metrics:server"),
        *("--workers", "2", "--host", "127.0.0.1", "--port", str(port)),
        *("--cert", str(cert_path), "--key", str(key_path), "--metrics-port", "0"),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        async with bounded(30):
            while not (line := (await process.stdout.readline()).decode()).startswith(
                "aiowt metrics of all workers on "
            ):
                assert line, "the supervisor exited"
            url = line.split()[-1]
            workers: dict[int, int] = {}
            while len(workers) < 2:
                await _read_listening(process.stdout, workers)
        # Sessions until both workers served some (each CONNECT from a new client port).
        served: list[int] = []
        async with bounded(60):
            while set(served) != set(workers.values()) or len(served) < 6:
                session = await connect(
                    f"https://127.0.0.1:{port}/pid", cert_hash=certificate.sha256_hex, timeout=5
                )
                served.append(int(dict(session.request.headers)["x-worker-pid"]))
                await session.aclose()
        samples = await asyncio.to_thread(_scrape, url)
        assert samples[
            ("aiowt_sessions_accepted_total", (("route", "/pid"), ("transport", "webtransport")))
        ] == len(served)
        assert samples[("aiowt_workers", (("state", "answered"),))] == 2
        assert samples[("aiowt_workers", (("state", "missing"),))] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        async with bounded(30):
            await process.wait()
