"""The engines part of the report (issue #16): aiowt on qh3 against raw qh3 and against
pywebtransport 0.21, and the issue's targets with their verdicts.

Ratios are medians of paired ratios, as in `report.transport_medians`: each repetition's
figure against the baseline's in the same repetition. They read "higher is better":
baseline CPU ÷ aiowt CPU, so 1.2x means aiowt spent a sixth less per operation.
"""

from __future__ import annotations

import statistics
from typing import Any

from .scenarios import SCENARIOS
from .servers import SERVER_TITLES

STACK_QH3 = "aiowt-stack-qh3"
PWT = "pywebtransport"
MEMORY_MARGIN = 0.10
"""aiowt's memory per held session may exceed its raw engine's by this share."""
# (scenario, minimum CPU ratio of the aioquic stack to raw aioquic), from the issue.
AIOQUIC_TARGETS = (("datagram_echo", 0.9), ("sessions_seq", 0.85), ("sessions_conc", 0.85))


def paired(
    transport: dict[str, list[dict[str, Any]]], kind: str, base: str, name: str
) -> tuple[float | None, float | None]:
    """(rate ratio, CPU ratio) of `kind` to `base` on scenario `name`, higher is better."""
    scenario = SCENARIOS[name]
    rates: list[float] = []
    cpus: list[float] = []
    for rep, ref in zip(transport.get(kind, []), transport.get(base, []), strict=False):
        row, other = rep.get(name) or {}, ref.get(name) or {}
        if row.get("error") or other.get("error"):
            continue
        value, base_value = row.get(scenario.metric), other.get(scenario.metric)
        if value and base_value:
            rates.append(value / base_value if scenario.higher_is_better else base_value / value)
        cpu, base_cpu = row.get("server_cpu_us_per_op"), other.get("server_cpu_us_per_op")
        if cpu and base_cpu:
            cpus.append(base_cpu / cpu)
    return (
        statistics.median(rates) if rates else None,
        statistics.median(cpus) if cpus else None,
    )


def _x(ratio: float | None) -> str:
    from .report import _fmt

    return "-" if ratio is None else f"{_fmt(ratio)}x"


def engine_lines(results: dict[str, Any], medians: dict[str, Any]) -> list[str]:
    """The "Engines" sections, or nothing when no qh3 kind was measured."""
    from .report import _fmt, _met  # the report imports this module: import on use

    transport = results.get("transport", {})
    holds = results.get("hold") or {}
    if STACK_QH3 not in transport and STACK_QH3 not in holds:
        return []
    lines: list[str] = []
    add = lines.append
    add("## Engines: aiowt on qh3 (issue #16)")
    add("")
    add(
        'aiowt with the recommended stack on the qh3 engine (`Server(engine="qh3")`), '
        "against raw qh3 (`bench/raw_server.py --engine qh3`, the qh3 ceiling) and "
        "pywebtransport 0.21. Server CPU per operation (µs per op, µs per MB for the "
        "stream echo), then the rate; ratios are baseline ÷ aiowt in CPU and aiowt ÷ "
        "baseline in rate (latency: baseline ÷ aiowt), so higher is better. The load "
        "client is the same aiowt client on aioquic for every server."
    )
    add("")
    kinds = [k for k in ("raw", "aiowt-stack", "raw-qh3", STACK_QH3, PWT) if k in medians]
    add("| scenario | " + " | ".join(SERVER_TITLES[k] for k in kinds) + " |")
    add("|" + " --- |" * (1 + len(kinds)))
    for name, scenario in SCENARIOS.items():
        cells = []
        for kind in kinds:
            cell = medians[kind].get(name, {})
            cells.append(f"{_fmt(cell.get('cpu_us'))} µs ({_fmt(cell.get('value'))})")
        add(f"| {scenario.title} ({scenario.unit}) | " + " | ".join(cells) + " |")
    add("")
    add(
        "| scenario | aiowt-qh3 ÷ raw qh3: CPU (rate) | aiowt-qh3 ÷ pywebtransport: CPU (rate) "
        "| aiowt ÷ raw aioquic: CPU (rate) |"
    )
    add("| --- | --- | --- | --- |")
    for name, scenario in SCENARIOS.items():
        cells = []
        for kind, base in ((STACK_QH3, "raw-qh3"), (STACK_QH3, PWT), ("aiowt-stack", "raw")):
            rate, cpu = paired(transport, kind, base, name)
            cells.append(f"**{_x(cpu)}** ({_x(rate)})" if cpu or rate else "-")
        add(f"| {scenario.title} | " + " | ".join(cells) + " |")
    add("")

    add("### Issue #16 targets (server CPU per operation)")
    add("")
    add("| target | measured | met |")
    add("| --- | --- | --- |")
    for name, scenario in SCENARIOS.items():
        _, cpu = paired(transport, STACK_QH3, PWT, name)
        add(
            f"| on qh3, the stack ahead of pywebtransport 0.21 ({scenario.title}): ≥ 1.0x "
            f"| {_x(cpu)} | {_met(cpu, 1.0)} |"
        )
    for name, target in AIOQUIC_TARGETS:
        _, cpu = paired(transport, "aiowt-stack", "raw", name)
        add(
            f"| on aioquic, the stack ≥ {target}x raw aioquic ({SCENARIOS[name].title}) "
            f"| {_x(cpu)} | {_met(cpu, target)} |"
        )
    for stack, raw in (("aiowt-stack", "raw"), (STACK_QH3, "raw-qh3")):
        mine = (holds.get(stack) or {}).get("server_bytes_per_session")
        theirs = (holds.get(raw) or {}).get("server_bytes_per_session")
        ratio = mine / theirs if mine and theirs else None
        measured = "not measured"
        if mine and theirs and ratio is not None:
            measured = f"{_fmt(mine / 1024)} KiB vs {_fmt(theirs / 1024)} KiB ({ratio - 1:+.0%})"
        count = (holds.get(stack) or {}).get("ops", 1000)
        verdict = "not measured"
        if ratio is not None:
            over = ratio - 1 - MEMORY_MARGIN  # in points of raw's figure, as the target reads
            verdict = "yes" if over <= 0 else f"**no** ({over:.0%} of raw's over the +10%)"
        add(
            f"| memory per real session at {count:,} held, {SERVER_TITLES[stack]} ≤ "
            f"{SERVER_TITLES[raw]} + 10% | {measured} | {verdict} |"
        )
    add("")
    return lines
