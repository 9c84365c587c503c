"""Reading another process's CPU time and memory from /proc (Linux), and the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every thread of `pid`, in seconds; 0.0 if unknown.

    `schedstat` counts nanoseconds, far finer than the 10 ms ticks of `stat`; the ticks
    are the fallback where schedstat is missing.
    """
    total_ns = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat") as f:
                total_ns += int(f.read().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of `pid` (default: this process), in bytes; 0 if unknown."""
    try:
        status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions: dict[str, str] = {}
    from importlib import metadata

    for name in ("aioquic", "pykka", "msgpack", "structlog", "cryptography"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "?"
    return {
        "cpu": model or platform.processor() or "?",
        "cores": os.cpu_count() or 0,
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "versions": versions,
    }


def log(text: str) -> None:
    sys.stderr.write(f"bench: {text}\n")
    sys.stderr.flush()


def run_json(argv: list[str], timeout: float) -> list[dict[str, Any]]:
    """Run a bench subprocess (stderr passes through) and parse its JSON lines."""
    try:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, cwd=REPO, timeout=timeout, text=True, check=False
        )
    except subprocess.TimeoutExpired:
        log(f"timed out after {timeout:.0f} s: {' '.join(argv[1:4])}")
        return []
    rows = []
    for line in done.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    if done.returncode != 0:
        log(f"exit status {done.returncode}: {' '.join(argv[1:4])}")
    return rows
