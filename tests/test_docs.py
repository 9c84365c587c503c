"""The documentation cannot drift from the code: its code runs, its names resolve, its
tables match what they describe."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["testing.md", "stats.md", "engines.md", "websocket.md"]


def code_of(page: str) -> str:
    text = (DOCS / page).read_text()
    return "\n\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page: str) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.replace('.', '_')}"}
    exec(compile(code_of(page), str(DOCS / page), "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert tests, f"{page} has no test_ functions"
    for test in tests:
        result = test()
        if inspect.iscoroutine(result):
            asyncio.run(result)


def test_the_readme_states_the_real_defaults() -> None:
    """The README's "Bounds and their defaults" block builds a server equal to `Server()`."""
    from aiowt import Server

    readme = (DOCS.parent / "README.md").read_text()
    section = readme.split("## Bounds and their defaults", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)
    documented = namespace["server"]
    default = Server()
    for name in inspect.signature(Server).parameters:
        if name in {
            "host",
            "port",
            "cert_file",
            "key_file",
            "certificate",
            "reuse_port",
            "services",
        }:
            continue
        assert getattr(documented, name) == getattr(default, name), name


# --- every name the pages use is a current one ----------------------------------------------

WRITTEN = sorted([*DOCS.glob("*.md"), DOCS.parent / "README.md"])
DOTTED = re.compile(r"(?<![\"'\w])aiowt(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
"""A dotted aiowt name; not in quotes, where it is a logger's name ("aiowt.access")."""


def _resolve(dotted: str) -> object:
    """The object `dotted` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("page", WRITTEN, ids=lambda page: page.name)
def test_every_aiowt_name_on_the_page_exists_and_is_current(page: Path) -> None:
    """`aiowt.x.y` names in the text and imports in the code blocks resolve, and none is
    a deprecated alias (warnings are errors in the tests)."""
    text = page.read_text()
    names = set(DOTTED.findall(text))
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(block, str(page), "exec", flags=flags)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiowt"):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    tracing = (DOCS.parent / "middleware" / "tracing.py").read_text()
    for name in sorted(names):
        if f'"{name}"' in tracing:
            continue  # an attribute name OTelTracing puts on spans, not a Python name
        _resolve(name.rstrip("."))


def test_the_metrics_table_is_the_catalogue() -> None:
    from aiowt.actors.metric_names import CATALOGUE

    page = (DOCS / "observability.md").read_text()
    table = page.split("<!-- catalogue -->", 1)[1].split("<!-- /catalogue -->", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.strip().splitlines()[2:]]
    documented = {
        cells[0].strip().strip("`"): (
            cells[1].strip(),
            tuple(label.strip() for label in cells[2].split(",") if label.strip()),
        )
        for cells in rows
    }
    assert documented == {spec.name: (spec.kind, spec.labels) for spec in CATALOGUE.values()}
