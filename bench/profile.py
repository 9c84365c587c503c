"""Where the aiowt server's time goes: py-spy on the server while the client loads it.

For each profiled scenario a fresh aiowt server with the recommended stack is started,
py-spy samples it for the whole scenario, and every sample is put in one part by its
innermost Python frame: aioquic (QUIC, TLS, HTTP/3), aiowt's transport, actors and
middleware, pykka, asyncio's event loop, structlog, other. py-spy is not a dependency
of aiowt: without it this is skipped with a note.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .servers import REPO, ServerProcess

PROFILED = ("sessions_conc", "datagram_echo", "stream_throughput")

_PARTS = {
    "aioquic": "aioquic (QUIC, TLS, HTTP/3)",
    "qh3": "qh3 (its Python layer and Rust core)",
    "transport": "aiowt transport",
    "actors": "aiowt actors",
    "middleware": "aiowt middleware",
    "pykka": "pykka",
    "structlog": "structlog",
    "asyncio": "asyncio event loop",
    "cryptography": "cryptography",
    "msgpack": "msgpack",
}
OURS = ("transport", "actors", "middleware")


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def _path(frame: str) -> str:
    """The source path of a py-spy frame `name (path:line)`, relative to its root.

    py-spy prints paths relative to sys.path entries when it can (`aioquic/...`,
    `transport/...`), absolute otherwise; both are brought to the relative form.
    """
    inner = frame.rpartition(" (")[2].rstrip(")")
    path = inner.rpartition(":")[0] or inner
    repo = f"{REPO}/"
    if path.startswith(repo):
        return path[len(repo) :]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" else tail
    return path


def _part(frame: str) -> str:
    return _PARTS.get(_path(frame).split("/", 1)[0], "other (stdlib, C)")


def summarize(raw: str) -> dict[str, Any]:
    """Categorise py-spy's collapsed stacks (`a;b;c count` lines).

    `categories`: the share of samples whose innermost frame is in each part (self
    time). `top_ours`: aiowt functions by the share of samples they are on the stack of
    (inclusive time).
    """
    by_part: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        by_part[_part(frames[-1])] += count
        seen = set()
        for frame in frames:
            path = _path(frame)
            if path.split("/", 1)[0] in OURS:
                name = f"{frame.rpartition(' (')[0]} ({path})"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count
    if not total:
        return {"samples": 0, "categories": []}
    return {
        "samples": total,
        "categories": [(part, n / total) for part, n in by_part.most_common()],
        "top_ours": [(func, n / total) for func, n in inclusive.most_common(12)],
    }


def profile_server(
    cert: tuple[str, str, str], log_dir: Path, kind: str = "aiowt-stack"
) -> dict[str, Any]:
    """Profile the `kind` server (an aiowt kind of `bench.servers`) in each scenario."""
    py_spy = _py_spy()
    if py_spy is None:
        return {"note": "py-spy not installed: `pip install py-spy` to profile"}
    cert_file, key_file, cert_hash = cert
    results: dict[str, Any] = {}
    for scenario in PROFILED:
        server = ServerProcess(kind, cert_file, key_file, log_dir=log_dir)
        out = log_dir / f"profile-{kind}-{scenario}.txt"
        spy: subprocess.Popen[bytes] | None = None
        try:
            server.start()
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--rate",
                    "500",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.client",
                    "--port",
                    str(server.port),
                    "--cert-hash",
                    cert_hash,
                    "--server-pid",
                    str(server.pid),
                    "--label",
                    f"profile {scenario}",
                    "--scenarios",
                    scenario,
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                timeout=180,
                check=False,
            )
        finally:
            if spy is not None:
                with contextlib.suppress(ProcessLookupError):
                    spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
            server.stop()
        results[scenario] = summarize(out.read_text()) if out.exists() else {"samples": 0}
    return results
