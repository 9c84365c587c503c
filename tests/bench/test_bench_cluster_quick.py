"""`bench.cluster` end to end in quick mode, so that it cannot rot: every measure gives
a number, and the "Measured" section renders from them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.cluster import render, write_doc

REPO = Path(__file__).resolve().parents[2]


def test_quick_cluster_bench_runs_end_to_end(tmp_path: Path, redis_server: object) -> None:
    # (`redis_server` only skips, or fails on CI, where redis-server is missing.)
    assert shutil.which("redis-server")
    done = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["admission"]["cpu_ratio"] > 0
    assert results["workers"]["rate_ratio"] > 0
    assert results["fanout"]["deliveries"] == 2 * 10 * 20
    doc = tmp_path / "scale.md"
    doc.write_text("# x\n<!-- bench.cluster -->\nold\n<!-- /bench.cluster -->\nafter\n")
    write_doc(render(results), doc)
    text = doc.read_text()
    assert "old" not in text
    assert "| room deliveries per second" in text
    assert text.endswith("<!-- /bench.cluster -->\nafter\n")
