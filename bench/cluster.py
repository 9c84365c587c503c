"""`python -m bench.cluster`: what the Redis backend costs, and what workers give.

    python -m bench.cluster            # the full run; prints JSON, writes docs/scale.md's figures
    python -m bench.cluster --quick    # tiny counts (tests/bench runs it)

Three measures, each against its baseline in the same run, on a private redis-server
(a unix socket, nothing on disk):

- **admission**: the recommended stack in one process, in-process backend against the
  Redis backend; server CPU per session over ``sessions_conc`` (1000 sessions, 50 at
  once), repetitions interleaved, medians. Target: Redis adds at most 5%. Redis' own
  CPU per session is reported beside it.
- **workers**: ``aiowt run --workers 2`` against ``--workers 1``, both on the Redis
  backend with the recommended stack; two load clients at once; sessions per second
  over both. Target: at least 1.7x.
- **fan-out**: two processes on one Redis, each with `members` members of one room;
  one process posts `posts` messages; deliveries per second over both processes (each
  post reaches every member). Target: at least 50,000/s.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._proc import REPO, cpu_seconds, log, machine, run_json
from .servers import ServerProcess

SCALE_DOC = REPO / "docs" / "scale.md"
TARGETS = {"admission_cpu_ratio": 1.05, "workers_rate_ratio": 1.7, "fanout_per_s": 50_000.0}


# --- admission -----------------------------------------------------------------------------


def _client(port: int, cert_hash: str, pid: int, quick: bool, label: str) -> list[str]:
    argv = [
        sys.executable,
        *("-m", "bench.client", "--port", str(port), "--cert-hash", cert_hash),
        *("--server-pid", str(pid), "--label", label, "--scenarios", "sessions_conc"),
    ]
    return [*argv, "--quick"] if quick else argv


def measure_admission(
    redis_url: str, redis_pid: int, cert: tuple[str, str, str], reps: int, quick: bool
) -> dict[str, Any]:
    cert_file, key_file, cert_hash = cert
    log_dir = Path(tempfile.mkdtemp(prefix="aiowt-bench-cluster-"))
    local = ServerProcess("aiowt-stack", cert_file, key_file, log_dir=log_dir)
    shared = ServerProcess("aiowt-stack", cert_file, key_file, log_dir=log_dir)
    shared.log_path = log_dir / "server-aiowt-stack-redis.log"
    shared.argv += ["--backend", redis_url]
    runs: dict[str, list[dict[str, Any]]] = {"in-process": [], "redis": []}
    try:
        for server in (local, shared):
            server.start()
        for rep in range(reps):
            order = [("in-process", local), ("redis", shared)]
            for name, server in order if rep % 2 == 0 else order[::-1]:
                log(f"admission {rep + 1}/{reps}: {name}")
                redis_before = cpu_seconds(redis_pid)
                rows = run_json(_client(server.port, cert_hash, server.pid, quick, name), 300)
                result = next((r["result"] for r in rows if r["scenario"] == "sessions_conc"), {})
                opened = result.get("ops") or 0
                if name == "redis" and opened:
                    result["redis_cpu_us_per_op"] = (
                        (cpu_seconds(redis_pid) - redis_before) / opened * 1e6
                    )
                runs[name].append(result)
    finally:
        local.stop()
        shared.stop()
    local_cpu = _median(r.get("server_cpu_us_per_op") for r in runs["in-process"])
    redis_cpu = _median(r.get("server_cpu_us_per_op") for r in runs["redis"])
    return {
        "in_process_cpu_us": local_cpu,
        "redis_cpu_us": redis_cpu,
        "redis_server_cpu_us": _median(r.get("redis_cpu_us_per_op") for r in runs["redis"]),
        "cpu_ratio": redis_cpu / local_cpu if local_cpu and redis_cpu else None,
        "in_process_rate": _median(r.get("rate") for r in runs["in-process"]),
        "redis_rate": _median(r.get("rate") for r in runs["redis"]),
        "reps": reps,
    }


# --- workers -------------------------------------------------------------------------------


def _start_workers(count: int, redis_url: str, cert: tuple[str, str, str]) -> tuple[Any, int]:
    cert_file, key_file, _ = cert
    process = subprocess.Popen(
        [
            sys.executable,
            # The supervisor even for one worker: both sides run alike.
            *("-m", "aiowt.workers", "bench.stack_app:server", "--workers", str(count)),
            *("--host", "127.0.0.1", "--port", "0", "--cert", cert_file, "--key", key_file),
            *("--backend", redis_url),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    port, listening = 0, 0
    deadline = time.monotonic() + 60
    while listening < count:
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the workers did not start")
        if match := re.search(r"https://\S+:(\d+) \(udp", line):
            port = int(match.group(1))
        if line.startswith("aiowt worker ") and " listening on " in line:
            listening += 1
    # Nobody reads its output from now on: drain it so it never blocks.
    drain = subprocess.Popen(["cat"], stdin=process.stdout, stdout=subprocess.DEVNULL)
    return (process, drain), port


def measure_workers(
    redis_url: str, cert: tuple[str, str, str], reps: int, quick: bool
) -> dict[str, Any]:
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpus: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(reps):
        for count in (1, 2) if rep % 2 == 0 else (2, 1):
            log(f"workers {rep + 1}/{reps}: {count}")
            (process, drain), port = _start_workers(count, redis_url, cert)
            try:
                workers = _children(process.pid)
                before = sum(cpu_seconds(pid) for pid in workers)
                rate, opened = _two_clients(port, cert[2], quick)
                rates[count].append(rate)
                if opened:
                    spent = sum(cpu_seconds(pid) for pid in workers) - before
                    cpus[count].append(spent / opened * 1e6)
            finally:
                process.terminate()
                process.wait(30)
                drain.wait(5)
    one, two = _median(rates[1]), _median(rates[2])
    one_cpu, two_cpu = _median(cpus[1]), _median(cpus[2])
    return {
        "one_worker_rate": one,
        "two_workers_rate": two,
        "rate_ratio": two / one if one and two else None,
        "one_worker_cpu_us": one_cpu,
        "two_workers_cpu_us": two_cpu,
        "cpu_ratio": two_cpu / one_cpu if one_cpu and two_cpu else None,
        "reps": reps,
    }


def _children(pid: int) -> list[int]:
    """The worker processes of a supervisor."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _two_clients(port: int, cert_hash: str, quick: bool) -> tuple[float, int]:
    """Sessions per second over two load clients started together, and sessions opened."""
    argvs = [_client(port, cert_hash, 0, quick, f"load{i}") for i in range(2)]
    clients = [
        subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True) for argv in argvs
    ]
    opened, longest = 0, 0.0
    for client in clients:
        out, _ = client.communicate(timeout=300)
        for line in out.splitlines():
            if line.startswith("{"):
                result = json.loads(line)["result"]
                opened += int(result.get("ops") or 0)
                longest = max(longest, float(result.get("seconds") or 0.0))
    # Each client times its own sessions (not its start-up); they run side by side.
    return (opened / longest if longest else 0.0), opened


# --- fan-out -------------------------------------------------------------------------------


def measure_fanout(redis_url: str, members: int, posts: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.room_process", "--url", redis_url]
    argv += ["--members", str(members), "--posts", str(posts)]
    poster = subprocess.Popen([*argv, "--post"], cwd=REPO, stdin=subprocess.PIPE, **_TEXT)
    listener = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, **_TEXT)
    try:
        for process in (listener, poster):
            assert process.stdout is not None
            if process.stdout.readline().strip() != "READY":
                raise RuntimeError("a room process did not start")
        assert listener.stdin is not None
        assert poster.stdin is not None
        listener.stdin.write("GO\n")
        listener.stdin.flush()
        poster.stdin.write("GO\n")
        poster.stdin.flush()
        done = [_last_json(process) for process in (poster, listener)]
    finally:
        for process in (poster, listener):
            if process.poll() is None:
                process.kill()
    started = min(d["started"] for d in done)
    finished = max(d["finished"] for d in done)
    deliveries = sum(d["deliveries"] for d in done)
    return {
        "members_per_process": members,
        "posts": posts,
        "deliveries": deliveries,
        "seconds": finished - started,
        "per_s": deliveries / (finished - started),
    }


_TEXT: dict[str, Any] = {"stdout": subprocess.PIPE, "text": True}


def _last_json(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=300)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# --- the run -------------------------------------------------------------------------------


def _median(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def render(results: dict[str, Any]) -> str:
    """The "Measured" section of docs/scale.md."""
    a, w, f = results["admission"], results["workers"], results["fanout"]

    def met(value: float | None, target: float, at_most: bool = False) -> str:
        if value is None:
            return "**no**"
        return "yes" if (value <= target if at_most else value >= target) else "**no**"

    def num(value: float | None, digits: int = 3) -> str:
        if value is None:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"

    m = results["machine"]
    lines = [
        f"Run {results['stamp']} on {m.get('cpu', '?')}, {m.get('cores', '?')} cores,"
        f" CPython {m.get('python', '?')}; `python -m bench.cluster` regenerates this section."
        " Load clients, servers and redis-server share the same cores.",
        "",
        "| measure | baseline | with the cluster | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| server CPU per session, recommended stack (µs) | {num(a['in_process_cpu_us'], 4)}"
        f" in process | {num(a['redis_cpu_us'], 4)} on Redis (+ {num(a['redis_server_cpu_us'])}"
        f" in redis-server) | {num(a['cpu_ratio'])}x | ≤ {TARGETS['admission_cpu_ratio']}x |"
        f" {met(a['cpu_ratio'], TARGETS['admission_cpu_ratio'], at_most=True)} |",
        f"| handshakes per second, recommended stack on Redis | {num(w['one_worker_rate'], 4)}"
        f" with 1 worker | {num(w['two_workers_rate'], 4)} with 2 workers | {num(w['rate_ratio'])}x"
        f" | ≥ {TARGETS['workers_rate_ratio']}x |"
        f" {met(w['rate_ratio'], TARGETS['workers_rate_ratio'])} |",
        f"| server CPU per session over all workers (µs) | {num(w['one_worker_cpu_us'], 4)}"
        f" with 1 worker | {num(w['two_workers_cpu_us'], 4)} with 2 workers |"
        f" {num(w['cpu_ratio'])}x | - | - |",
        f"| room deliveries per second, 2 processes x {f['members_per_process']} members,"
        f" {f['posts']} posts | - | {num(f['per_s'], 4)} | - | ≥ {TARGETS['fanout_per_s']:,.0f} |"
        f" {met(f['per_s'], TARGETS['fanout_per_s'])} |",
    ]
    return "\n".join(lines)


def write_doc(section: str, doc: Path = SCALE_DOC) -> None:
    text = doc.read_text()
    begin, end = "<!-- bench.cluster -->", "<!-- /bench.cluster -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{section}\n{end}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="leave docs/scale.md alone")
    parser.add_argument(
        "--only", default="admission,workers,fanout", help="a comma-separated subset (no write)"
    )
    parser.add_argument("--render", metavar="JSON", help="write docs/scale.md from a saved run")
    args = parser.parse_args(argv)
    if args.render:
        write_doc(render(json.loads(Path(args.render).read_text())))
        return 0
    only = set(args.only.split(","))
    quick = args.quick
    reps = args.reps or (1 if quick else 3)

    from aiowt.redis_server import RedisServer
    from aiowt.transport.tls import generate_self_signed, write_certificate

    with tempfile.TemporaryDirectory(prefix="aiowt-bench-") as tmp:
        certificate = generate_self_signed()
        cert_file, key_file = (str(p) for p in write_certificate(certificate, tmp))
        cert = (cert_file, key_file, certificate.sha256_hex)
        with RedisServer() as redis:
            assert redis.process is not None
            url = redis.url()
            results: dict[str, Any] = {
                "stamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                "machine": machine(),
            }
            if "admission" in only:
                results["admission"] = measure_admission(url, redis.process.pid, cert, reps, quick)
            if "workers" in only:
                results["workers"] = measure_workers(url, cert, reps, quick)
            if "fanout" in only:
                results["fanout"] = measure_fanout(url, 10 if quick else 100, 20 if quick else 2000)
    print(json.dumps(results), flush=True)
    if not quick and not args.no_write and len(only) == 3:
        write_doc(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
