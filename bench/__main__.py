"""`python -m bench`: run every scenario against every server, side by side, and report.

    python -m bench                      # the full run; writes docs/performance.md
    python -m bench --quick              # tiny counts, one repetition (what `make test` runs)
    python -m bench --scenario datagram_echo --servers raw,aiowt-stack --reps 3
    python -m bench --servers raw-qh3,aiowt-stack-qh3 --no-actors --no-scale   # qh3 only
    python -m bench --no-transport --no-actors --no-scale --hold 1000 \
        --servers raw,aiowt-stack,raw-qh3,aiowt-stack-qh3   # memory per held session only

Servers run in processes of their own, the load client in another; repetitions
interleave the servers (rotating their order) so that a noisy neighbour hurts all of
them alike, and the report takes medians. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import report
from ._proc import log as _log
from ._proc import machine, run_json
from .scenarios import SCENARIOS
from .servers import REPO, SERVER_KINDS, ServerProcess, engine_of, pywebtransport_python

RESULTS = REPO / "bench" / "results"
FULL_KINDS = ("raw", "aiowt-bare", "aiowt-stack", "raw-qh3", "aiowt-stack-qh3", "pywebtransport")
QUICK_KINDS = ("raw", "aiowt-bare", "aiowt-stack")
"""Quick stays on aioquic: it proves the harness runs, and tests/bench pins its servers."""
HOLD_KINDS = ("raw", "aiowt-stack", "raw-qh3", "aiowt-stack-qh3")


def _client_argv(
    server: ServerProcess, cert_hash: str, quick: bool, time_limit: float
) -> list[str]:
    argv = [
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
        server.kind,
        "--time-limit",
        str(time_limit),
    ]
    if server.kind == "pywebtransport":
        # Its server answers 400 to the draft-02 token from this client; draft-15's works.
        argv += ["--protocol", "webtransport-h3"]
    if quick:
        argv.append("--quick")
    return argv


def run_transport(
    kinds: list[str],
    scenarios: list[str],
    reps: int,
    quick: bool,
    cert: tuple[str, str, str],
    log_dir: Path,
    pwt_python: str,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    cert_file, key_file, cert_hash = cert
    servers = [
        ServerProcess(kind, cert_file, key_file, log_dir=log_dir, pwt_python=pwt_python)
        for kind in kinds
    ]
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    stack_info: dict[str, Any] = {}
    time_limit = 20.0 if quick else 60.0
    try:
        for server in servers:
            server.start()
            if server.kind in ("aiowt-stack", "aiowt-stack-qh3") and not stack_info:
                stack_info = server.info
        for rep in range(reps):
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            for server in order:
                if not server.alive():
                    _log(f"{server.kind} server died; see {server.log_path}")
                    continue
                _log(f"repetition {rep + 1}/{reps}: {server.title}")
                argv = _client_argv(server, cert_hash, quick, time_limit)
                argv += ["--scenarios", ",".join(scenarios)]
                rows = run_json(argv, timeout=time_limit * len(scenarios) + 60)
                runs[server.kind].append({row["scenario"]: row["result"] for row in rows})
    finally:
        for server in servers:
            server.stop()
    return runs, stack_info


def run_hold(
    kinds: list[str], count: int, cert: tuple[str, str, str], log_dir: Path
) -> dict[str, Any]:
    """Hold `count` real sessions open against a fresh server of each kind."""
    cert_file, key_file, cert_hash = cert
    results: dict[str, Any] = {}
    for kind in kinds:
        server = ServerProcess(kind, cert_file, key_file, log_dir=log_dir)
        try:
            server.start()
            time.sleep(0.5)  # let the fresh process settle before its memory is read
            _log(f"holding {count} sessions against {server.title}")
            argv = _client_argv(server, cert_hash, False, 120.0)
            argv += ["--hold", str(count), "--concurrency", "50"]
            rows = run_json(argv, timeout=300)
            if rows:
                results[kind] = rows[0]["result"]
        finally:
            server.stop()
    return results


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, one repetition")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only these transport scenarios (repeatable)",
    )
    parser.add_argument("--servers", help=f"comma-separated, from {','.join(SERVER_KINDS)}")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 1)")
    parser.add_argument("--out", type=Path, help="the report (default docs/performance.md)")
    parser.add_argument("--json", type=Path, help="raw results (default bench/results/…)")
    parser.add_argument(
        "--hold",
        type=int,
        help="real concurrent sessions (default 1000); given, the hold runs even with --no-scale",
    )
    parser.add_argument("--no-transport", action="store_true")
    parser.add_argument("--no-actors", action="store_true")
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the aiowt server")
    args = parser.parse_args(argv)

    # SIGTERM unwinds like Ctrl-C, so the server processes are always stopped.
    signal.signal(signal.SIGTERM, _terminate)
    quick = args.quick
    reps = args.reps or (1 if quick else 5)
    scenarios = args.scenario or list(SCENARIOS)
    if args.servers:
        kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
        unknown = set(kinds) - set(SERVER_KINDS)
        if unknown:
            parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    else:
        kinds = list(QUICK_KINDS if quick else FULL_KINDS)
    if "raw" not in kinds:
        kinds.insert(0, "raw")  # every ratio is to raw aioquic
    if any(engine_of(k) == "qh3" for k in kinds) and "raw-qh3" not in kinds:
        kinds.insert(1, "raw-qh3")  # and the qh3 kinds' to raw qh3 too
    out = args.out or (RESULTS / "quick.md" if quick else REPO / "docs" / "performance.md")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or RESULTS / f"{'quick' if quick else 'full'}-{stamp}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)

    notes: list[str] = []
    pwt_python = ""
    if "pywebtransport" in kinds:
        found, note = pywebtransport_python(install=not quick)
        if found is None:
            kinds.remove("pywebtransport")
            notes.append(f"pywebtransport skipped: {note}")
            _log(notes[-1])
        else:
            pwt_python = found

    command = "python -m bench" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    results: dict[str, Any] = {
        "when": stamp,
        "quick": quick,
        "reps": reps,
        "command": command.strip(),
        "machine": machine(),
        "servers": kinds,
        "scenarios": scenarios,
        "notes": notes,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aiowt-bench-") as tmp:
        from aiowt.transport.tls import generate_self_signed, write_certificate

        certificate = generate_self_signed()
        cert_path, key_path = write_certificate(certificate, tmp)
        cert = (str(cert_path), str(key_path), certificate.sha256_hex)
        log_dir = RESULTS / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)

        if not args.no_transport:
            runs, stack = run_transport(kinds, scenarios, reps, quick, cert, log_dir, pwt_python)
            results["transport"] = runs
            results["stack"] = stack
        if not args.no_actors:
            _log("actor layer")
            rows = run_json(
                [sys.executable, "-m", "bench.actors"] + (["--quick"] if quick else []), 300
            )
            results["actors"] = rows[0] if rows else {}
        if not args.no_scale:
            _log("scale: session actors and registries")
            rows = run_json(
                [sys.executable, "-m", "bench.scale"] + (["--quick"] if quick else []), 600
            )
            results["scale"] = rows[0] if rows else {}
        if not args.no_scale or args.hold:
            hold = args.hold or (30 if quick else 1000)
            # Each aiowt stack beside its raw engine: the memory target compares the two.
            held = [k for k in HOLD_KINDS if k in kinds or k in ("raw", "aiowt-stack")]
            results["hold"] = run_hold(held, hold, cert, log_dir)
        if args.profile:
            from .profile import profile_server

            results["profile"] = profile_server(cert, log_dir)
    results["seconds"] = round(time.monotonic() - started, 1)

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    if args.json is None:
        (RESULTS / ("latest-quick.json" if quick else "latest.json")).write_text(
            json.dumps(results, indent=1)
        )
    report.write(results, out)
    _log(f"results in {json_path}; report in {out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
