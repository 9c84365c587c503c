"""`bench.websocket` end to end in quick mode, so that it cannot rot: both servers start,
every scenario gives a ratio, and the table lands between its markers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.websocket import SCENARIOS, write_table

REPO = Path(__file__).resolve().parents[2]


def test_quick_websocket_bench_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.websocket", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 2 * len(SCENARIOS)  # one and eight sessions each
    doc = tmp_path / "analysis.md"
    doc.write_text("# x\n<!-- bench.websocket -->\nold\n<!-- /bench.websocket -->\nafter\n")
    write_table("| new |", doc)
    assert (
        doc.read_text()
        == "# x\n<!-- bench.websocket -->\n| new |\n<!-- /bench.websocket -->\nafter\n"
    )
