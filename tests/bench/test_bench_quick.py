"""The benchmark harness, end to end in quick mode, so that it cannot rot.

Tiny counts, one repetition, raw aioquic and both aiowt servers (pywebtransport is not
needed): every scenario must produce a number, the actor and scale parts must run, the
real-connection hold must see every session live, and the report must be written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.profile import summarize
from bench.report import render
from bench.scenarios import SCENARIOS
from bench.servers import recommended_stack

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    results_path = tmp_path / "results.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--json", str(results_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 60
    results = json.loads(results_path.read_text())
    assert results["servers"] == ["raw", "aiowt-bare", "aiowt-stack"]
    for kind in results["servers"]:
        (rep,) = results["transport"][kind]
        for name, scenario in SCENARIOS.items():
            assert "error" not in rep[name], (kind, name, rep[name])
            assert rep[name][scenario.metric] > 0, (kind, name, rep[name])
            assert rep[name]["server_cpu_s"] > 0, (kind, name)
    assert results["actors"]["ask_p50_us"] > 0
    assert results["actors"]["composite_64_per_s"] > 0
    assert results["scale"]["sessions"]["traced"]["traced_above_empty"] > 0
    assert all(run["all_stopped"] for run in results["scale"]["stop"]["runs"])
    for hold in results["hold"].values():
        assert hold["live"] == hold["ops"] > 0
    text = out.read_text()
    assert "ratio to raw aioquic" in text
    assert "Quick mode" in text


def test_recommended_stack_is_the_seed_order() -> None:
    stack = recommended_stack()
    assert stack.names == [
        "Recover",
        "RequestID",
        "Logger",
        "RateLimit",
        "BearerAuth",
        "MaxSessions",
    ]
    assert len(stack.middleware) == 6


def test_profile_summary_splits_aioquic_from_ours() -> None:
    raw = "\n".join(
        [
            f"run (x.py:1);_flush ({REPO}/transport/_protocol.py:10) 3",
            "run (x.py:1);receive_datagram (/v/site-packages/aioquic/quic/connection.py:9) 6",
            "run (x.py:1);_run_once (/usr/lib/python3.11/asyncio/base_events.py:1) 1",
        ]
    )
    summary = summarize(raw)
    assert summary["samples"] == 10
    shares = dict(summary["categories"])
    assert shares["aioquic (QUIC, TLS, HTTP/3)"] == 0.6
    assert shares["aiowt transport"] == 0.3
    assert shares["asyncio event loop"] == 0.1


def test_report_renders_without_any_results() -> None:
    assert render({"servers": [], "machine": {}}).startswith("# Performance")
